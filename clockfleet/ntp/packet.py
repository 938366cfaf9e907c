"""The 48-byte NTP header (RFC 5905 §7.3): encode a client request, decode a reply.

Timestamps stay raw 64-bit NTP values in the packet; conversion to Unix time is era-aware
(the 32-bit seconds field wraps on 2036-02-07), resolved against a local clock reading.
Everything in integer nanoseconds so that sub-microsecond differences survive.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_LENGTH = 48
MODE_CLIENT = 3
MODE_SERVER = 4
LEAP_UNSYNCHRONISED = 3

# Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01).
NTP_UNIX_DELTA_S = 2_208_988_800
_NS = 1_000_000_000
_ERA_NS = (1 << 32) * _NS
_DELTA_NS = NTP_UNIX_DELTA_S * _NS

_HEADER = struct.Struct("!BBbbII4sQQQQ")


class PacketError(ValueError):
    """Bytes that are not an NTP header at all (too short, not a multiple of 4)."""


@dataclass(frozen=True)
class NtpPacket:
    leap: int
    version: int
    mode: int
    stratum: int
    poll: int
    precision: int
    root_delay_s: float
    root_dispersion_s: float
    ref_id: bytes
    reference_ts: int  # raw 64-bit NTP timestamps from here on
    origin_ts: int
    receive_ts: int
    transmit_ts: int

    def encode(self) -> bytes:
        return _HEADER.pack(
            (self.leap << 6) | (self.version << 3) | self.mode,
            self.stratum,
            self.poll,
            self.precision,
            seconds_to_short(self.root_delay_s),
            seconds_to_short(self.root_dispersion_s),
            self.ref_id,
            self.reference_ts,
            self.origin_ts,
            self.receive_ts,
            self.transmit_ts,
        )


def encode_request(nonce: int) -> bytes:
    """Mode 3, version 4; the transmit field carries a random nonce, not our clock.

    Like chrony's client mode: nothing of the local clock is revealed, and the nonce comes
    back as the origin timestamp, which is what authenticates the reply as ours.
    """
    return _REQUEST_HEAD + _TIMESTAMP.pack(nonce)


# Everything of a request before its transmit field: LI 0, VN 4, mode 3, then zeros. Built
# once (a request is sent per sample; building a packet object for it cost 40x the bytes).
_REQUEST_HEAD = bytes([(4 << 3) | MODE_CLIENT]) + bytes(39)
_TIMESTAMP = struct.Struct("!Q")


def decode(data: bytes) -> NtpPacket:
    """Decode the header; extension fields or a MAC after 48 bytes are ignored."""
    if len(data) < HEADER_LENGTH:
        raise PacketError(f"{len(data)} bytes, shorter than the {HEADER_LENGTH}-byte header")
    if len(data) % 4:
        raise PacketError(f"{len(data)} bytes, not a multiple of 4")
    (lvm, stratum, poll, precision, rdelay, rdisp, ref_id, ref, org, rec, xmt) = (
        _HEADER.unpack_from(data)
    )
    return NtpPacket(
        leap=lvm >> 6,
        version=(lvm >> 3) & 7,
        mode=lvm & 7,
        stratum=stratum,
        poll=poll,
        precision=precision,
        root_delay_s=short_to_seconds(rdelay),
        root_dispersion_s=short_to_seconds(rdisp),
        ref_id=ref_id,
        reference_ts=ref,
        origin_ts=org,
        receive_ts=rec,
        transmit_ts=xmt,
    )


def short_to_seconds(value: int) -> float:
    """NTP short format: unsigned 16.16 fixed point seconds."""
    return value / 65536.0


def seconds_to_short(seconds: float) -> int:
    return max(0, min(0xFFFFFFFF, round(seconds * 65536.0)))


def ntp_to_unix_ns(ts: int, near_unix_ns: int) -> int:
    """Raw 64-bit NTP timestamp -> Unix nanoseconds, in the era closest to near_unix_ns.

    The seconds field says nothing about its era; the era that puts the time nearest to the
    local clock is the right one for any clock less than 68 years off (RFC 5905 §6).
    """
    seconds, fraction = ts >> 32, ts & 0xFFFFFFFF
    in_era_ns = seconds * _NS + ((fraction * _NS + (1 << 31)) >> 32)
    near_ntp_ns = near_unix_ns + _DELTA_NS
    era = (near_ntp_ns - in_era_ns + _ERA_NS // 2) // _ERA_NS
    return in_era_ns + era * _ERA_NS - _DELTA_NS


def unix_ns_to_ntp(unix_ns: int) -> int:
    """Unix nanoseconds -> raw 64-bit NTP timestamp (seconds field modulo 2^32)."""
    ntp_ns = unix_ns + _DELTA_NS
    seconds, rest_ns = divmod(ntp_ns, _NS)
    fraction = ((rest_ns << 32) + _NS // 2) // _NS
    if fraction > 0xFFFFFFFF:  # rounding carried into the next second
        seconds, fraction = seconds + 1, 0
    return ((seconds & 0xFFFFFFFF) << 32) | fraction


def kiss_code(ref_id: bytes) -> str | None:
    """The ASCII kiss code of a stratum-0 reply, or None when ref_id is not one.

    Kiss codes are up to four upper-case letters or digits, padded with NUL or space.
    """
    text = ref_id.rstrip(b"\0 ")
    if not text or not all(0x30 <= b <= 0x39 or 0x41 <= b <= 0x5A for b in text):
        return None
    return text.decode("ascii")
