"""Validation of one NTP reply, in the order of chrony's ntp_core.c (tests 1-7, then A-D).

Two stages:
- `gate()` decides whether a datagram is the answer to our request at all: it must parse,
  carry a version of 1..4 (chrony's parse_packet) and echo our random transmit nonce as its
  origin (test 2). A packet failing here proves nothing (anyone can send it), so the caller
  ignores it and keeps waiting; the failure is only reported if nothing better arrives.
- `check_reply()` judges an authenticated answer: mode, kiss-o'-death, zero or reversed
  timestamps (test 3), leap/stratum (test 6), server processing time and delay (test A),
  root distance (test 7 and chrony's maxdistance), then the panic limit. Its verdict is final.
"""

from __future__ import annotations

from dataclasses import dataclass

from clockfleet.agent.ntp_packet import (
    LEAP_UNSYNCHRONISED,
    MODE_SERVER,
    NtpPacket,
    PacketError,
    decode,
    kiss_code,
    ntp_to_unix_ns,
)

MAX_SERVER_INTERVAL_S = 4.0  # chrony's MAX_SERVER_INTERVAL: T3 - T2
MAX_STRATUM = 16
KOD_OUTCOMES = {"RATE": "kod-rate", "DENY": "kod-deny", "RSTR": "kod-rstr"}

_NS = 1_000_000_000


@dataclass(frozen=True)
class Sample:
    """One validated answer. Offset is server minus local."""

    offset_s: float  # ((T2 - T1) + (T3 - T4)) / 2
    delay_s: float  # (T4 - T1) - (T3 - T2)
    stratum: int
    leap: int
    root_delay_s: float
    root_dispersion_s: float
    ref_id: bytes

    @property
    def root_distance_s(self) -> float:
        return self.root_delay_s / 2 + self.root_dispersion_s


@dataclass(frozen=True)
class ProbeSettings:
    # Per server, whole sample burst. Short, because a silent server costs all of it
    # (no ICMP shortcut) and the list is tried one by one; a slow but live server is still
    # reached by the second pass below.
    timeout_s: float = 0.3
    # When the first pass found no server and some only timed out, the list is probed once
    # more with this per-server timeout (0 turns the second pass off).
    retry_timeout_s: float = 2.0
    samples: int = 4  # SNTP samples per server; keep the lowest-delay one
    resolve_timeout_s: float = 2.0  # all of a list's names, looked up at once
    max_distance_s: float = 3.0  # chrony maxdistance
    max_delay_s: float = 3.0  # chrony maxdelay
    # Beyond it: panic-offset, except on the first good sync since the agent started, when
    # the probe waives it for an offset that the next passing server confirms (probe.py).
    panic_offset_s: float = 1000.0
    confirm_offset_s: float = 0.5  # falseticker confirmation threshold
    agree_s: float = 0.1


LOCAL_PRECISION_S = 1e-6  # our T1 and T4: nanosecond clocks read by Python, ~1 us
MAX_SERVER_PRECISION_S = 1e-3  # what a server may claim: precision is a signed byte (2^127 s)


def precision_s(server_log2: int) -> float:
    """How far below zero a delay may read and still be noise: both clocks' precision."""
    return min(2.0**server_log2, MAX_SERVER_PRECISION_S) + LOCAL_PRECISION_S


@dataclass(frozen=True)
class Failure:
    """Why an exchange gave no sample: an outcome of clockfleet.protocol OUTCOMES."""

    outcome: str
    detail: str
    kiss: str | None = None  # the kiss code of a kod-* failure


def gate(data: bytes, nonce: int) -> NtpPacket | Failure:
    """The packet if it answers our request (parses, version 1..4, origin == nonce)."""
    try:
        packet = decode(data)
    except PacketError as e:
        return Failure("bad-packet", f"unparseable reply: {e}")
    if not 1 <= packet.version <= 4:
        return Failure("bad-packet", f"version {packet.version}, outside 1..4")
    if packet.origin_ts != nonce:
        return Failure("bad-origin", "reply's origin timestamp is not the nonce we sent")
    return packet


def check_reply(
    packet: NtpPacket, t1_ns: int, t4_ns: int, settings: ProbeSettings
) -> Sample | Failure:
    """Judge an authenticated reply; t1/t4 are our own send/receive times (Unix ns)."""
    if packet.mode != MODE_SERVER:
        return Failure("bad-packet", f"mode {packet.mode}, a server answers in mode 4")
    # A KoD is recognised before the timestamp tests, as chrony does: servers may send it
    # with zero timestamps. It is only believed because the origin check has passed.
    if packet.leap == LEAP_UNSYNCHRONISED and packet.stratum == 0:
        code = kiss_code(packet.ref_id)
        if code is not None:
            return Failure(KOD_OUTCOMES.get(code, "kod-other"), f"kiss code {code}", code)
    if packet.receive_ts == 0:
        return Failure("bad-packet", "receive timestamp is zero")
    if packet.transmit_ts == 0:
        return Failure("bad-packet", "transmit timestamp is zero")
    t2_ns = ntp_to_unix_ns(packet.receive_ts, t1_ns)
    t3_ns = ntp_to_unix_ns(packet.transmit_ts, t1_ns)
    processing_s = (t3_ns - t2_ns) / _NS
    if processing_s < 0:
        return Failure("bad-packet", f"receive time {-processing_s:.6f} s after transmit time")
    if processing_s > MAX_SERVER_INTERVAL_S:
        return Failure(
            "bad-packet",
            f"server processing time {processing_s:.3f} s > {MAX_SERVER_INTERVAL_S:g} s",
        )
    if packet.leap == LEAP_UNSYNCHRONISED:
        return Failure(
            "unsynchronised", f"leap indicator 3 (not synchronised), stratum {packet.stratum}"
        )
    if packet.stratum == 0:
        return Failure("bad-stratum", "stratum 0 without a kiss code")
    if packet.stratum >= MAX_STRATUM:
        return Failure("bad-stratum", f"stratum {packet.stratum}, outside 1..15")
    # A delay below zero by less than the two clocks' precision is reading noise (a coarse
    # server clock): it means "no measurable delay". Beyond that, a clock stepped between
    # T1 and T4 or a lying server made the sample: it proves nothing and is discarded,
    # never clamped into a plausible one.
    raw_delay_s = ((t4_ns - t1_ns) - (t3_ns - t2_ns)) / _NS
    if raw_delay_s < -precision_s(packet.precision):
        return Failure(
            "bad-packet",
            f"negative round-trip delay {raw_delay_s:.6f} s, beyond the clocks' precision "
            f"{precision_s(packet.precision):.6f} s",
        )
    delay_s = max(0.0, raw_delay_s)
    offset_s = ((t2_ns - t1_ns) + (t3_ns - t4_ns)) / 2 / _NS
    if delay_s > settings.max_delay_s:
        return Failure("too-far", f"round-trip delay {delay_s:.3f} s > {settings.max_delay_s:g} s")
    distance_s = packet.root_delay_s / 2 + packet.root_dispersion_s
    if distance_s > settings.max_distance_s:
        return Failure(
            "too-far", f"root distance {distance_s:.3f} s > {settings.max_distance_s:g} s"
        )
    if abs(offset_s) > settings.panic_offset_s:
        return Failure(
            "panic-offset",
            f"offset {offset_s:+.3f} s beyond the panic limit {settings.panic_offset_s:g} s",
        )
    return Sample(
        offset_s=offset_s,
        delay_s=delay_s,
        stratum=packet.stratum,
        leap=packet.leap,
        root_delay_s=packet.root_delay_s,
        root_dispersion_s=packet.root_dispersion_s,
        ref_id=packet.ref_id,
    )
