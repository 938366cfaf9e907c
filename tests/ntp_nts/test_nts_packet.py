"""NTS extension fields: what a request carries, and every check an answer must pass."""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from clockfleet.ntp import nts_packet as p
from clockfleet.ntp.packet import encode_request
from tests.ntp_nts.ntskit import server_reply

C2S, S2C = bytes(range(32)), bytes(range(32, 64))
COOKIE = b"k" * 100
HEADER = encode_request(0x1122334455667788)
REPLY_HEADER = b"\x24" + HEADER[1:]  # mode 4; the header is authenticated as it is


def fields_of(data: bytes) -> list[tuple[int, int, bytes]]:
    fields = p.split_fields(data, 48)
    assert isinstance(fields, list)
    return fields


def test_request_carries_uid_cookie_placeholders_and_a_last_authenticator() -> None:
    sealed = p.seal_request(HEADER, COOKIE, 3, C2S)
    kinds = [kind for _at, kind, _body in fields_of(sealed.data)]
    assert kinds == [p.UNIQUE_IDENTIFIER, p.COOKIE] + [p.COOKIE_PLACEHOLDER] * 3 + [p.AUTHENTICATOR]
    assert sealed.data[:48] == HEADER and fields_of(sealed.data)[0][2] == sealed.uid


def test_request_authenticator_opens_with_the_client_to_server_key() -> None:
    sealed = p.seal_request(HEADER, COOKIE, 0, C2S)
    at, _kind, body = fields_of(sealed.data)[-1]
    nonce_length, tag_length = struct.unpack_from("!HH", body)
    nonce, tag = body[4 : 4 + nonce_length], body[4 + nonce_length : 4 + nonce_length + tag_length]
    assert AESSIV(C2S).decrypt(tag, [sealed.data[:at], nonce]) == b""


def test_placeholders_refill_the_jar_within_the_size_limit() -> None:
    assert p.placeholders_wanted(held=7, cookie_length=100) == 0
    assert p.placeholders_wanted(held=0, cookie_length=100) == 7
    assert p.placeholders_wanted(held=0, cookie_length=252) == 2  # 864 bytes / 256 each


def test_authentic_reply_gives_its_new_cookies() -> None:
    reply = server_reply(REPLY_HEADER, b"u" * 32, S2C, (b"a" * 100, b"b" * 100))
    assert p.open_response(reply, b"u" * 32, S2C) == p.Opened((b"a" * 100, b"b" * 100))


def test_any_flipped_byte_fails_authentication() -> None:
    reply = server_reply(REPLY_HEADER, b"u" * 32, S2C)
    for i in range(len(reply)):
        tampered = bytearray(reply)
        tampered[i] ^= 0x01
        assert isinstance(p.open_response(bytes(tampered), b"u" * 32, S2C), p.NotAuthentic), i


def test_reply_sealed_with_another_key_fails_authentication() -> None:
    reply = server_reply(REPLY_HEADER, b"u" * 32, C2S)
    got = p.open_response(reply, b"u" * 32, S2C)
    assert isinstance(got, p.NotAuthentic) and "authentication failed" in got.detail


def test_reply_to_another_request_is_refused() -> None:
    got = p.open_response(server_reply(REPLY_HEADER, b"v" * 32, S2C), b"u" * 32, S2C)
    assert isinstance(got, p.NotAuthentic) and "not ours" in got.detail


def test_field_after_the_authenticator_is_refused() -> None:
    extra = p.field(0x7777, b"\0" * 28)
    got = p.open_response(
        server_reply(REPLY_HEADER, b"u" * 32, S2C, after_auth=extra), b"u" * 32, S2C
    )
    assert isinstance(got, p.NotAuthentic) and "not the last" in got.detail


def test_mac_after_the_fields_is_refused() -> None:
    got = p.open_response(
        server_reply(REPLY_HEADER, b"u" * 32, S2C, after_auth=b"\0" * 20), b"u" * 32, S2C
    )
    assert isinstance(got, p.NotAuthentic) and "MAC" in got.detail


def test_plain_ntp_reply_is_not_authentic() -> None:
    got = p.open_response(REPLY_HEADER, b"u" * 32, S2C)
    assert isinstance(got, p.NotAuthentic) and not got.nak


def test_authentic_reply_without_a_cookie_is_refused() -> None:
    got = p.open_response(server_reply(REPLY_HEADER, b"u" * 32, S2C, ()), b"u" * 32, S2C)
    assert isinstance(got, p.NotAuthentic) and "without a new cookie" in got.detail


def test_nts_nak_with_our_uid_is_told_apart() -> None:
    nak = bytearray(REPLY_HEADER)
    nak[0], nak[1], nak[12:16] = 0xE4, 0, b"NTSN"
    data = bytes(nak) + p.field(p.UNIQUE_IDENTIFIER, b"u" * 32)
    got = p.open_response(data, b"u" * 32, S2C)
    assert isinstance(got, p.NotAuthentic) and got.nak


def test_authenticator_without_nonce_padding_is_refused() -> None:
    short_nonce = AESSIV(S2C).encrypt(p.field(p.COOKIE, COOKIE), [REPLY_HEADER, b"n" * 4])
    body = struct.pack("!HH", 4, len(short_nonce)) + b"n" * 4 + short_nonce
    data = REPLY_HEADER + p.field(p.UNIQUE_IDENTIFIER, b"u" * 32)
    data += p.field(p.AUTHENTICATOR, body)
    got = p.open_response(data, b"u" * 32, S2C)
    assert isinstance(got, p.NotAuthentic) and "padding" in got.detail
