"""The AES-SIV tag of an empty plaintext, which an NTS request needs, on every `cryptography`.

An NTS request encrypts nothing: the header and its extension fields are associated data, and
its Authenticator carries the synthetic IV alone. cryptography's AESSIV refuses a zero-length
plaintext in 43.0.3, the newest release with a wheel for Debian 11's Python 3.9 ("data must
not be zero length"), while 50.0 takes one. Where it refuses, the tag is computed here as
RFC 5297 defines it: with an empty plaintext the ciphertext is empty and the output is
V = S2V(K1, AD1, ..., ADn, "") (§2.6), K1 the first half of the key (the CTR half encrypts
nothing). S2V is built on cryptography's AES-CMAC; tests/ntp_nts checks it against RFC 5297's
example and against AESSIV itself wherever AESSIV takes an empty plaintext.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

BLOCK = 16
_RB = 0x87  # RFC 5297 §2.3: the constant of doubling in GF(2^128)


def empty_plaintext_tag(key: bytes, associated: Sequence[bytes]) -> bytes:
    """AESSIV(key).encrypt(b"", associated): the 16-byte synthetic IV."""
    if _library_takes_empty():
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV

        return AESSIV(key).encrypt(b"", list(associated))
    return s2v(key[: len(key) // 2], [*associated, b""])


@functools.lru_cache(maxsize=1)
def _library_takes_empty() -> bool:
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    try:
        AESSIV(bytes(32)).encrypt(b"", [b"probe"])
    except ValueError:
        return False
    return True


def s2v(mac_key: bytes, strings: Sequence[bytes]) -> bytes:
    """RFC 5297 §2.4 S2V over `strings` (the last one the plaintext), with AES-CMAC."""
    if not strings:
        return _cmac(mac_key, (1).to_bytes(BLOCK, "big"))
    d = _cmac(mac_key, bytes(BLOCK))
    for s in strings[:-1]:
        d = _xor(_dbl(d), _cmac(mac_key, s))
    last = strings[-1]
    if len(last) >= BLOCK:
        t = last[:-BLOCK] + _xor(last[-BLOCK:], d)
    else:
        padded = last + b"\x80" + bytes(BLOCK - len(last) - 1)
        t = _xor(_dbl(d), padded)
    return _cmac(mac_key, t)


def _cmac(key: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import algorithms
    from cryptography.hazmat.primitives.cmac import CMAC

    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _dbl(block: bytes) -> bytes:
    n = int.from_bytes(block, "big") << 1
    if n >> (8 * BLOCK):
        n = (n ^ _RB) & ((1 << (8 * BLOCK)) - 1)
    return n.to_bytes(BLOCK, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))
