"""Validation of one NTP reply, labelled with the tests of chrony's ntp_core.c.

chrony (process_response) runs tests 1, 2, 3, 5 ("valid packet"), then 6 and 7 ("synced
packet"), then A to D ("good packet"). We run the same tests in that order and say where
ours differ, so a reader can put this file beside chrony's:

    before   parse: length >= 48 and a multiple of 4, version 1..4 (chrony's parse_packet);
             mode 4 (chrony dispatches on mode before the tests)
    test 1   duplicate: receive and transmit stamps equal to the last reply's (in a burst)
    test 2   bogus: the origin stamp must be the random nonce we sent as our transmit stamp
    KoD      leap 3 + stratum 0 + a kiss code, believed only after tests 1 and 2, as chrony
    test 3   receive and transmit stamps non-zero (origin is non-zero by test 2)
    test 5   authentication: not used (no symmetric keys or NTS); always passes
    test 6   leap != 3, stratum 1..15
    test 7   root delay / 2 + root dispersion < 16 s (RFC 5905's MAXDISP)
    test A   round-trip delay <= maxdelay (3 s), server processing time T3 - T2 in 0..4 s
    test B,C need a register of earlier samples (chrony's defaults leave B off); a one-shot
             burst keeps its lowest-delay sample instead, as SNTP (RFC 4330) does
    test D   synchronisation loop: cannot happen, the agent serves no time
    select   root distance <= maxdistance (3 s): chrony applies it when selecting sources
    ours     a delay negative beyond the clocks' precision (a clock stepped mid-exchange, or
             a lying server): chrony clamps the delay to its precision instead
    ours     the panic limit (ntpd's 1000 s), waived by the probe on a first sync

Two stages, because test 2 decides whether a datagram is an answer at all:
- `gate()` runs the parse and test 2. A packet failing here proves nothing (anyone can send
  it), so the caller ignores it and keeps waiting; the failure is reported only if nothing
  better arrives.
- `check_reply()` runs everything else on an authenticated answer. Its verdict is final.
A failure is logged at debug level with the tests passed so far, like chrony's test bits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clockfleet.ntp.packet import (
    LEAP_UNSYNCHRONISED,
    MODE_SERVER,
    NtpPacket,
    PacketError,
    decode,
    kiss_code,
    ntp_to_unix_ns,
)
from clockfleet.protocol.messages import Outcome

MAX_SERVER_INTERVAL_S = 4.0  # chrony's MAX_SERVER_INTERVAL: T3 - T2 (test A)
MAX_STRATUM = 16  # chrony's NTP_MAX_STRATUM (test 6)
MAX_DISPERSION_S = 16.0  # RFC 5905's MAXDISP, chrony's NTP_MAX_DISPERSION (test 7)

log = logging.getLogger("clockfleet.ntp")

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
    stamps: tuple[int, int] = (0, 0)  # the reply's raw receive and transmit stamps (test 1)

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
    # A server silent this long (or 3 x its usual round trip, if longer) does not hold up the
    # next one: its query starts too, while the list's order still decides. 0: one by one.
    stagger_s: float = 0.04
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
    """Why an exchange gave no sample."""

    outcome: Outcome
    detail: str
    kiss: str | None = None  # the kiss code of a kod-* failure


# The kiss codes a client acts on (RFC 5905 §7.4): RATE asks it to back off; DENY and RSTR
# refuse it, so it stops asking that server until its list changes.
KISS_RATE = "RATE"
KISS_REFUSALS = frozenset({"DENY", "RSTR"})


def kod_outcome(code: str) -> Outcome:
    """The report outcome of a kiss code."""
    if code == KISS_RATE:
        return "kod-rate"
    if code == "DENY":
        return "kod-deny"
    if code == "RSTR":
        return "kod-rstr"
    return "kod-other"


def gate(data: bytes, nonce: int) -> NtpPacket | Failure:
    """The packet if it answers our request: it parses and passes test 2 (origin == nonce)."""
    try:
        packet = decode(data)
    except PacketError as e:
        return Failure("bad-packet", f"unparseable reply: {e}")
    if not 1 <= packet.version <= 4:
        return Failure("bad-packet", f"version {packet.version}, outside 1..4")
    if packet.origin_ts != nonce:
        return Failure("bad-origin", "test 2: reply's origin timestamp is not the nonce we sent")
    return packet


class _Tests:
    """The tests a reply passed so far, in chrony's names (for the debug log), and how a
    failed one is reported."""

    def __init__(self) -> None:
        self.passed: list[str] = ["2"]  # gate() ran test 2

    def fail(self, test: str, outcome: Outcome, detail: str, kiss: str | None = None) -> Failure:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("NTP tests passed %s, failed %s: %s", " ".join(self.passed), test, detail)
        return Failure(outcome, detail, kiss)


def check_reply(
    packet: NtpPacket,
    t1_ns: int,
    t4_ns: int,
    settings: ProbeSettings,
    previous: tuple[int, int] | None = None,
) -> Sample | Failure:
    """Judge an authenticated reply (it passed gate()); t1/t4 are our own send/receive
    times (Unix ns); `previous` is the (receive, transmit) stamps of the last reply taken
    from this server in this burst, for test 1. The header's tests first (mode, 1, the
    kiss-o'-death, 3, 5, 6, 7), then the times' (A to D, maxdistance, the panic limit)."""
    tests = _Tests()
    failure = _check_header(packet, previous, tests)
    if failure is not None:
        return failure
    return _check_times(packet, t1_ns, t4_ns, settings, tests)


def _check_header(
    packet: NtpPacket, previous: tuple[int, int] | None, tests: _Tests
) -> Failure | None:
    fail, passed = tests.fail, tests.passed
    if packet.mode != MODE_SERVER:
        return fail("mode", "bad-packet", f"mode {packet.mode}, a server answers in mode 4")
    if previous is not None and (packet.receive_ts, packet.transmit_ts) == previous:
        return fail("1", "bad-packet", "test 1: a duplicate of the previous reply")
    passed.insert(0, "1")
    # A KoD is recognised before test 3, as chrony does: servers may send it with zero
    # timestamps. It is believed only because tests 1 and 2 passed.
    if packet.leap == LEAP_UNSYNCHRONISED and packet.stratum == 0:
        code = kiss_code(packet.ref_id)
        if code is not None:
            return fail("KoD", kod_outcome(code), f"kiss code {code}", code)
    if packet.receive_ts == 0:
        return fail("3", "bad-packet", "test 3: receive timestamp is zero")
    if packet.transmit_ts == 0:
        return fail("3", "bad-packet", "test 3: transmit timestamp is zero")
    passed += ["3", "5"]
    if packet.leap == LEAP_UNSYNCHRONISED:
        return fail(
            "6",
            "unsynchronised",
            f"test 6: leap indicator 3 (not synchronised), stratum {packet.stratum}",
        )
    if packet.stratum == 0:
        return fail("6", "bad-stratum", "test 6: stratum 0 without a kiss code")
    if packet.stratum >= MAX_STRATUM:
        return fail("6", "bad-stratum", f"test 6: stratum {packet.stratum}, outside 1..15")
    passed.append("6")
    distance_s = packet.root_delay_s / 2 + packet.root_dispersion_s
    if distance_s >= MAX_DISPERSION_S:
        return fail(
            "7", "too-far", f"test 7: root distance {distance_s:.3f} s >= {MAX_DISPERSION_S:g} s"
        )
    passed.append("7")
    return None


def _check_times(
    packet: NtpPacket, t1_ns: int, t4_ns: int, settings: ProbeSettings, tests: _Tests
) -> Sample | Failure:
    fail = tests.fail
    distance_s = packet.root_delay_s / 2 + packet.root_dispersion_s
    t2_ns = ntp_to_unix_ns(packet.receive_ts, t1_ns)
    t3_ns = ntp_to_unix_ns(packet.transmit_ts, t1_ns)
    processing_s = (t3_ns - t2_ns) / _NS
    raw_delay_s = ((t4_ns - t1_ns) - (t3_ns - t2_ns)) / _NS
    if processing_s < 0:
        return fail(
            "A", "bad-packet", f"test A: receive time {-processing_s:.6f} s after transmit time"
        )
    if processing_s > MAX_SERVER_INTERVAL_S:
        return fail(
            "A",
            "bad-packet",
            f"test A: server processing time {processing_s:.3f} s > {MAX_SERVER_INTERVAL_S:g} s",
        )
    if raw_delay_s > settings.max_delay_s:
        return fail(
            "A",
            "too-far",
            f"test A: round-trip delay {raw_delay_s:.3f} s > {settings.max_delay_s:g} s",
        )
    tests.passed += ["A", "B", "C", "D"]
    if distance_s > settings.max_distance_s:
        return fail(
            "maxdistance",
            "too-far",
            f"root distance {distance_s:.3f} s > maxdistance {settings.max_distance_s:g} s",
        )
    # A delay below zero by less than the two clocks' precision is reading noise (a coarse
    # server clock): it means "no measurable delay". Beyond that, a clock stepped between
    # T1 and T4 or a lying server made the sample: it proves nothing and is discarded,
    # never clamped into a plausible one.
    if raw_delay_s < -precision_s(packet.precision):
        return fail(
            "negative-delay",
            "bad-packet",
            f"negative round-trip delay {raw_delay_s:.6f} s, beyond the clocks' precision "
            f"{precision_s(packet.precision):.6f} s",
        )
    offset_s = ((t2_ns - t1_ns) + (t3_ns - t4_ns)) / 2 / _NS
    if abs(offset_s) > settings.panic_offset_s:
        return fail(
            "panic",
            "panic-offset",
            f"offset {offset_s:+.3f} s beyond the panic limit {settings.panic_offset_s:g} s",
        )
    return Sample(
        offset_s=offset_s,
        delay_s=max(0.0, raw_delay_s),
        stratum=packet.stratum,
        leap=packet.leap,
        root_delay_s=packet.root_delay_s,
        root_dispersion_s=packet.root_dispersion_s,
        ref_id=packet.ref_id,
        stamps=(packet.receive_ts, packet.transmit_ts),
    )
