"""NTS Key Establishment records (RFC 8915 §4): the request we send, the answer we accept.

An NTS-KE message is a run of records, each a 16-bit type (the top bit marks it critical),
a 16-bit body length and the body, ending with a critical, empty End of Message record. We
ask for NTPv4 (next protocol 0) with AEAD_AES_SIV_CMAC_256 (15), the one algorithm every
NTS server must support, and check every record of the answer as chrony's NTS-KE client
does (nts_ke_client.c, process_response):

    next protocol   critical, exactly one value, NTPv4 (0)
    AEAD algorithm  exactly one value, the one we offered (15)
    error, warning  end the exchange (the server's code is reported)
    cookie          1..256 bytes, a multiple of 4, at most 8 kept; others are ignored
    NTPv4 server    1..255 printable bytes without spaces: a host name or address literal
    NTPv4 port      exactly 2 bytes, 1..65535
    anything else   ignored unless critical, which ends the exchange
    the message     at most 16384 bytes; one End of Message, last; nothing after it

The TLS session around them is nts_tls.py's; this module is pure bytes in, values out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Optional, Union

KE_PORT = 4460
ALPN = b"ntske/1"
EXPORTER_LABEL = b"EXPORTER-network-time-security"
NEXT_PROTOCOL_NTPV4 = 0
AEAD_AES_SIV_CMAC_256 = 15
KEY_LENGTH = 32  # AES-SIV-CMAC-256: two AES-128 keys

END_OF_MESSAGE = 0
NEXT_PROTOCOL = 1
ERROR = 2
WARNING = 3
AEAD_ALGORITHM = 4
COOKIE = 5
NTPV4_SERVER = 6
NTPV4_PORT = 7
COMPLIANT_128GCM_EXPORT = 1024
CRITICAL = 0x8000

MAX_MESSAGE = 16384
MAX_RECORD_BODY = 256
MAX_COOKIE = 256
MAX_COOKIES = 8
ERROR_NAMES = {0: "unrecognised critical record", 1: "bad request", 2: "internal server error"}

_HEADER = struct.Struct("!HH")


def record(kind: int, body: bytes = b"", critical: bool = True) -> bytes:
    return _HEADER.pack((CRITICAL if critical else 0) | kind, len(body)) + body


def request() -> bytes:
    """Our one request: NTPv4, AES-SIV-CMAC-256, end."""
    return (
        record(NEXT_PROTOCOL, struct.pack("!H", NEXT_PROTOCOL_NTPV4))
        + record(AEAD_ALGORITHM, struct.pack("!H", AEAD_AES_SIV_CMAC_256))
        + record(END_OF_MESSAGE)
    )


def exporter_context(s2c: bool) -> bytes:
    """RFC 8915 §5.1: protocol id, AEAD id, then 0 for client-to-server, 1 for the reverse."""
    return struct.pack("!HHB", NEXT_PROTOCOL_NTPV4, AEAD_AES_SIV_CMAC_256, int(s2c))


@dataclass(frozen=True)
class KeAnswer:
    """What a good answer gave: cookies, and where to send NTP (None: the KE server's own
    address, and the port the list names)."""

    cookies: tuple[bytes, ...]
    server: Optional[str] = None
    port: Optional[int] = None


@dataclass(frozen=True)
class KeRefusal:
    """Why an answer is refused; `no_cookies` when only the cookies were missing."""

    detail: str
    no_cookies: bool = False


def message_complete(data: bytes) -> Union[bool, KeRefusal]:
    """True when `data` holds one whole message (its End of Message last), False while more
    may come, a refusal when it can never become one."""
    if len(data) > MAX_MESSAGE:
        return KeRefusal(f"answer longer than {MAX_MESSAGE} bytes")
    at = 0
    while at + _HEADER.size <= len(data):
        kind, length = _HEADER.unpack_from(data, at)
        end = at + _HEADER.size + length
        if end > len(data):
            return False
        if kind & ~CRITICAL == END_OF_MESSAGE:
            if kind != CRITICAL | END_OF_MESSAGE or length != 0:
                return KeRefusal("malformed End of Message record")
            if end != len(data):
                return KeRefusal("data after the End of Message record")
            return True
        at = end
    return False


@dataclass
class _Reading:
    next_protocol: bool = False
    aead: bool = False
    cookies: list[bytes] = field(default_factory=list)
    server: Optional[str] = None
    port: Optional[int] = None


def parse_answer(data: bytes) -> Union[KeAnswer, KeRefusal]:
    """Judge a complete answer (message_complete(data) is True) record by record."""
    seen = _Reading()
    at = 0
    while at < len(data):
        kind, length = _HEADER.unpack_from(data, at)
        body = data[at + _HEADER.size : at + _HEADER.size + length]
        at += _HEADER.size + length
        critical, kind = bool(kind & CRITICAL), kind & ~CRITICAL
        if kind == END_OF_MESSAGE:
            break
        if length > MAX_RECORD_BODY:
            if critical:
                return KeRefusal(f"critical record {kind} of {length} bytes, too long")
            continue
        refusal = _take(seen, kind, critical, body)
        if refusal is not None:
            return refusal
    if not seen.next_protocol:
        return KeRefusal("no next protocol record")
    if not seen.aead:
        return KeRefusal("no AEAD algorithm record")
    if not seen.cookies:
        return KeRefusal("the answer carries no cookie", no_cookies=True)
    return KeAnswer(tuple(seen.cookies), seen.server, seen.port)


def _take(seen: _Reading, kind: int, critical: bool, body: bytes) -> Optional[KeRefusal]:
    """Fold one record into `seen`; a refusal ends the whole answer."""
    if kind == NEXT_PROTOCOL:
        if not critical or body != struct.pack("!H", NEXT_PROTOCOL_NTPV4):
            return KeRefusal("next protocol is not NTPv4 alone (or not critical)")
        seen.next_protocol = True
    elif kind == AEAD_ALGORITHM:
        if body != struct.pack("!H", AEAD_AES_SIV_CMAC_256):
            return KeRefusal("AEAD algorithm is not the AES-SIV-CMAC-256 we offered")
        seen.aead = True
    elif kind in (ERROR, WARNING):
        what = "error" if kind == ERROR else "warning"
        code = struct.unpack("!H", body)[0] if len(body) == 2 else None
        name = ERROR_NAMES.get(code, "") if kind == ERROR and code is not None else ""
        return KeRefusal(f"server sent {what} {code}" + (f" ({name})" if name else ""))
    elif kind == COOKIE:
        if 1 <= len(body) <= MAX_COOKIE and len(body) % 4 == 0 and len(seen.cookies) < MAX_COOKIES:
            seen.cookies.append(body)
    elif kind == NTPV4_SERVER:
        if not 1 <= len(body) <= 255 or not all(0x21 <= b <= 0x7E for b in body):
            return KeRefusal("invalid NTPv4 server record")
        seen.server = body.decode("ascii")
    elif kind == NTPV4_PORT:
        port = struct.unpack("!H", body)[0] if len(body) == 2 else 0
        if port == 0:
            return KeRefusal("invalid NTPv4 port record")
        seen.port = port
    elif kind == COMPLIANT_128GCM_EXPORT:
        if body:
            return KeRefusal("non-empty compliant-128gcm record")
    elif critical:
        return KeRefusal(f"unknown critical record {kind}")
    return None
