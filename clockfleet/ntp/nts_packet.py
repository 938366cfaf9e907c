"""NTS extension fields of an NTP packet (RFC 8915 §5), sealed and opened with AES-SIV.

A request is our 48-byte header, then:

    Unique Identifier       32 random bytes the answer must echo
    NTS Cookie              one cookie from the jar (it holds the server's keys for us)
    Cookie Placeholder(s)   as long as the cookie, one per further cookie we want back
    Authenticator and EEF   a 16-byte nonce and the SIV tag over everything before it,
                            sealed with the client-to-server key

An answer is accepted only when, as chrony's NNC_CheckResponseAuth checks: it has extension
fields, each well formed (at least 16 bytes, a multiple of 4, inside the packet, no MAC
after them); the Unique Identifier is ours; the Authenticator is the last field, its nonce
and ciphertext lengths fit with the padding RFC 8915 asks for, and it opens with the
server-to-client key over everything before it; the fields inside it are well formed; and
at least one new cookie is inside. An unauthenticated NTS NAK (stratum 0, kiss code NTSN)
with our Unique Identifier says the server could not read our cookie.

AES-SIV is `cryptography`'s (AESSIV: a 256-bit key is AEAD_AES_SIV_CMAC_256; the nonce is
the last associated-data element, as RFC 5297 and RFC 8915 have it); a request's tag over an
empty plaintext comes from nts_siv.py, since some releases refuse one.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass
from typing import Union

from clockfleet.ntp.nts_siv import empty_plaintext_tag
from clockfleet.ntp.packet import HEADER_LENGTH

UNIQUE_IDENTIFIER = 0x0104
COOKIE = 0x0204
COOKIE_PLACEHOLDER = 0x0304
AUTHENTICATOR = 0x0404

UID_LENGTH = 32
NONCE_LENGTH = 16
TAG_LENGTH = 16
MIN_FIELD = 16  # RFC 7822: the shortest extension field
MAX_MAC = 24  # RFC 7822: what follows the last field and is this short is a MAC
MAX_COOKIES = 8
MAX_COOKIE = 256
MAX_COOKIE_BYTES = 8 * 108  # of one request's cookies and placeholders: no IP fragments
NAK_KISS = b"NTSN"

_FIELD = struct.Struct("!HH")


@dataclass(frozen=True)
class Sealed:
    """A request ready to send, and what its answer must echo."""

    data: bytes
    uid: bytes


@dataclass(frozen=True)
class Opened:
    """A verified answer's new cookies."""

    cookies: tuple[bytes, ...]


@dataclass(frozen=True)
class NotAuthentic:
    detail: str
    nak: bool = False  # an NTS NAK: the server did not take our cookie


def field(kind: int, body: bytes) -> bytes:
    padded = body + b"\0" * (-len(body) % 4)
    return _FIELD.pack(kind, _FIELD.size + len(padded)) + padded


def placeholders_wanted(held: int, cookie_length: int) -> int:
    """How many placeholders to send beside a cookie when `held` cookies are left after it:
    enough to fill the jar again, within MAX_COOKIE_BYTES (chrony's rule)."""
    per = cookie_length + _FIELD.size
    return max(0, min(MAX_COOKIES - held, MAX_COOKIE_BYTES // per) - 1)


def seal_request(header: bytes, cookie: bytes, placeholders: int, c2s_key: bytes) -> Sealed:
    """The NTS request for NTP `header` (48 bytes), carrying `cookie`."""
    uid = secrets.token_bytes(UID_LENGTH)
    parts = [header, field(UNIQUE_IDENTIFIER, uid), field(COOKIE, cookie)]
    parts += [field(COOKIE_PLACEHOLDER, bytes(len(cookie)))] * placeholders
    associated = b"".join(parts)
    nonce = secrets.token_bytes(NONCE_LENGTH)
    tag = empty_plaintext_tag(c2s_key, [associated, nonce])
    body = struct.pack("!HH", len(nonce), len(tag)) + nonce + tag
    return Sealed(associated + field(AUTHENTICATOR, body), uid)


def split_fields(data: bytes, start: int) -> Union[list[tuple[int, int, bytes]], str]:
    """(offset, type, body) of each extension field from `start` to the end, or why the
    bytes are not a run of well-formed fields."""
    fields = []
    at = start
    while at < len(data):
        if len(data) - at <= MAX_MAC:
            return f"{len(data) - at} bytes after the fields (a MAC, or garbage)"
        kind, length = _FIELD.unpack_from(data, at)
        if length < MIN_FIELD or length % 4 or at + length > len(data):
            return f"malformed extension field at byte {at} (length {length})"
        fields.append((at, kind, data[at + _FIELD.size : at + length]))
        at += length
    return fields


def _inner_fields(data: bytes) -> Union[list[tuple[int, bytes]], str]:
    """The fields inside the ciphertext: no MAC rule there, a field is at least 4 bytes."""
    out, at = [], 0
    while at < len(data):
        if len(data) - at < _FIELD.size:
            return "truncated encrypted field"
        kind, length = _FIELD.unpack_from(data, at)
        if length < _FIELD.size or length % 4 or at + length > len(data):
            return "malformed encrypted field"
        out.append((kind, data[at + _FIELD.size : at + length]))
        at += length
    return out


def open_response(data: bytes, uid: bytes, s2c_key: bytes) -> Union[Opened, NotAuthentic]:
    """Verify an answer to the request whose Unique Identifier was `uid`."""
    if len(data) <= HEADER_LENGTH:
        return NotAuthentic("no NTS extension fields")
    fields = split_fields(data, HEADER_LENGTH)
    if isinstance(fields, str):
        return NotAuthentic(fields)
    uid_ok, plaintext = False, None
    for at, kind, body in fields:
        if kind == UNIQUE_IDENTIFIER:
            if body != uid:
                return NotAuthentic("unique identifier is not ours")
            uid_ok = True
        elif kind == AUTHENTICATOR:
            if at + _FIELD.size + len(body) != len(data):
                return NotAuthentic("authenticator is not the last field")
            opened = _decrypt(data[:at], body, s2c_key)
            if isinstance(opened, NotAuthentic):
                return opened
            plaintext = opened
    if not uid_ok or plaintext is None:
        if uid_ok and data[1] == 0 and data[12:16] == NAK_KISS:
            return NotAuthentic("NTS NAK: the server could not use our cookie", nak=True)
        return NotAuthentic("unique identifier or authenticator missing")
    return _cookies_in(plaintext)


def _decrypt(associated: bytes, body: bytes, s2c_key: bytes) -> Union[bytes, NotAuthentic]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    if len(body) < 4:
        return NotAuthentic("authenticator too short")
    nonce_length, ciphertext_length = struct.unpack_from("!HH", body)
    padded_nonce = nonce_length + (-nonce_length % 4)
    padded_ciphertext = ciphertext_length + (-ciphertext_length % 4)
    if 4 + padded_nonce + padded_ciphertext > len(body):
        return NotAuthentic("authenticator lengths exceed the field")
    if nonce_length < 1 or ciphertext_length < TAG_LENGTH:
        return NotAuthentic("authenticator nonce or ciphertext too short")
    if 4 + max(padded_nonce, NONCE_LENGTH) + padded_ciphertext > len(body):
        return NotAuthentic("authenticator without the padding RFC 8915 asks for")
    nonce = body[4 : 4 + nonce_length]
    ciphertext = body[4 + padded_nonce : 4 + padded_nonce + ciphertext_length]
    try:
        return AESSIV(s2c_key).decrypt(ciphertext, [associated, nonce])
    except InvalidTag:
        return NotAuthentic("authentication failed: the reply does not open with our key")


def _cookies_in(plaintext: bytes) -> Union[Opened, NotAuthentic]:
    inner = _inner_fields(plaintext)
    if isinstance(inner, str):
        return NotAuthentic(inner)
    cookies = [
        body
        for kind, body in inner
        if kind == COOKIE and len(body) + _FIELD.size >= MIN_FIELD and len(body) <= MAX_COOKIE
    ]
    if not cookies:
        return NotAuthentic("authenticated reply without a new cookie")
    return Opened(tuple(cookies))
