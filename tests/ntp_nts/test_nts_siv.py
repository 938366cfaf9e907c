"""An NTS request's tag over an empty plaintext is AES-SIV's, whichever `cryptography` the
host has: the S2V of nts_siv.py gives RFC 5297's example and the same tag as AESSIV itself,
and seal_request uses it where AESSIV refuses an empty plaintext (cryptography 43.0.3, the
release Debian 11's agent package carries)."""

from __future__ import annotations

import secrets

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from clockfleet.ntp import nts_packet, nts_siv


def test_s2v_gives_rfc_5297s_deterministic_example():
    # RFC 5297 Appendix A.1: the synthetic IV of its example (the CMAC final).
    key = bytes.fromhex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
    ad = bytes.fromhex("101112131415161718191a1b1c1d1e1f2021222324252627")
    plaintext = bytes.fromhex("112233445566778899aabbccddee")
    assert nts_siv.s2v(key[:16], [ad, plaintext]) == bytes.fromhex(
        "85632d07c6e8f37f950acd320a2ecc93"
    )


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 48, 200, 1000])
def test_the_computed_tag_is_aessivs_over_an_empty_plaintext(length: int):
    key = secrets.token_bytes(32)
    associated = [secrets.token_bytes(length), secrets.token_bytes(16)]
    try:
        expected = AESSIV(key).encrypt(b"", associated)
    except ValueError:
        pytest.skip("this cryptography refuses an empty plaintext: nothing to compare with")
    assert nts_siv.s2v(key[:16], [*associated, b""]) == expected


def test_a_request_sealed_without_the_librarys_empty_plaintext_opens_with_aessiv(monkeypatch):
    monkeypatch.setattr(nts_siv, "_library_takes_empty", lambda: False)
    key = secrets.token_bytes(32)
    sealed = nts_packet.seal_request(bytes(48), secrets.token_bytes(100), 1, key)
    fields = nts_packet.split_fields(sealed.data, 48)
    assert not isinstance(fields, str)
    at, kind, body = fields[-1]
    assert kind == nts_packet.AUTHENTICATOR
    nonce, tag = body[4:20], body[20:36]
    # The server's side, with the library: the tag verifies over everything before it.
    assert AESSIV(key).decrypt(tag, [sealed.data[:at], nonce]) == b""
