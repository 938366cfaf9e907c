"""Checks of one reply, on synthetic packets: the order chrony's ntp_core.c uses, and the
cases no server can be made to produce in a test quickly (a 3 s round trip)."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from clockfleet.ntp.checks import Failure, ProbeSettings, Sample, check_reply, gate
from clockfleet.ntp.packet import NtpPacket, unix_ns_to_ntp

NS = 1_000_000_000
T1 = 1_800_000_000 * NS  # our send time
NONCE = 0x1122334455667788
SETTINGS = ProbeSettings()


def reply(offset_s: float = 0.0, **fields: object) -> NtpPacket:
    """A good stratum-2 answer to a request sent at T1, received 1 ms later."""
    t2 = T1 + 400_000 + round(offset_s * NS)
    packet = NtpPacket(
        leap=0,
        version=4,
        mode=4,
        stratum=2,
        poll=0,
        precision=-20,
        root_delay_s=0.002,
        root_dispersion_s=0.001,
        ref_id=b"\x7f\x00\x00\x01",
        reference_ts=unix_ns_to_ntp(t2 - NS),
        origin_ts=NONCE,
        receive_ts=unix_ns_to_ntp(t2),
        transmit_ts=unix_ns_to_ntp(t2 + 200_000),
    )
    return dataclasses.replace(packet, **fields)


def check(packet: NtpPacket, t4: int = T1 + 1_000_000) -> Sample | Failure:
    return check_reply(packet, T1, t4, SETTINGS)


def outcome(result: Sample | Failure) -> str:
    return "ok" if isinstance(result, Sample) else result.outcome


def test_a_good_reply_gives_offset_and_delay_from_our_own_t1_and_t4() -> None:
    sample = check(reply(offset_s=2.5))
    assert isinstance(sample, Sample)
    # T2 - T1 = 2.5004 s, T3 - T4 = 2.5004 + 0.0002 - 0.001 s
    assert sample.offset_s == pytest.approx(2.5, abs=1e-9)
    assert sample.delay_s == pytest.approx(0.0008, abs=1e-9)
    assert sample.root_distance_s == pytest.approx(0.002)


def test_gate_passes_only_the_reply_carrying_our_nonce_as_origin() -> None:
    assert isinstance(gate(reply().encode(), NONCE), NtpPacket)
    assert gate(reply().encode(), NONCE + 1) == Failure(
        "bad-origin", "test 2: reply's origin timestamp is not the nonce we sent"
    )


@pytest.mark.parametrize("version", [0, 5, 7])
def test_gate_refuses_versions_outside_1_to_4(version: int) -> None:
    assert outcome(gate(reply(version=version).encode(), NONCE)) == "bad-packet"


def test_gate_refuses_a_truncated_packet() -> None:
    assert outcome(gate(reply().encode()[:40], NONCE)) == "bad-packet"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"mode": 3}, "bad-packet"),
        ({"mode": 5}, "bad-packet"),
        ({"receive_ts": 0}, "bad-packet"),
        ({"transmit_ts": 0}, "bad-packet"),
        ({"leap": 3}, "unsynchronised"),
        ({"leap": 3, "stratum": 0, "ref_id": b"\0\0\0\0"}, "unsynchronised"),
        ({"leap": 3, "stratum": 0, "ref_id": b"RATE"}, "kod-rate"),
        ({"leap": 3, "stratum": 0, "ref_id": b"DENY"}, "kod-deny"),
        ({"leap": 3, "stratum": 0, "ref_id": b"RSTR"}, "kod-rstr"),
        ({"leap": 3, "stratum": 0, "ref_id": b"INIT"}, "kod-other"),
        ({"stratum": 0, "ref_id": b"\x01\x02\x03\x04"}, "bad-stratum"),
        ({"stratum": 16}, "bad-stratum"),
        ({"stratum": 255}, "bad-stratum"),
        ({"root_dispersion_s": 3.1}, "too-far"),
        ({"root_delay_s": 6.2, "root_dispersion_s": 0.0}, "too-far"),
        ({"leap": 1}, "ok"),
        ({"leap": 2}, "ok"),
        ({"stratum": 15}, "ok"),
        ({"version": 1}, "ok"),
    ],
)
def test_reply_fields_map_to_outcomes(fields: dict, expected: str) -> None:
    assert outcome(check(reply(**fields))) == expected


def test_receive_time_after_transmit_time_is_a_bad_packet() -> None:
    good = reply()
    result = check(dataclasses.replace(good, receive_ts=good.transmit_ts + (1 << 20)))
    assert outcome(result) == "bad-packet"
    assert "after transmit" in result.detail  # type: ignore[union-attr]


def test_server_processing_time_over_4_s_is_a_bad_packet() -> None:
    good = reply()
    result = check(dataclasses.replace(good, transmit_ts=good.receive_ts + (5 << 32)))
    assert outcome(result) == "bad-packet"
    assert "processing time" in result.detail  # type: ignore[union-attr]


def test_a_kiss_o_death_is_recognised_even_with_zero_timestamps() -> None:
    kod = reply(leap=3, stratum=0, ref_id=b"DENY", receive_ts=0, transmit_ts=0)
    assert outcome(check(kod)) == "kod-deny"


def test_a_round_trip_over_max_delay_is_too_far() -> None:
    result = check(reply(), t4=T1 + 3_500_000_000)
    assert outcome(result) == "too-far"
    assert "delay" in result.detail  # type: ignore[union-attr]


def test_an_offset_beyond_the_panic_limit_is_never_a_sample() -> None:
    assert outcome(check(reply(offset_s=1000.5))) == "panic-offset"
    assert outcome(check(reply(offset_s=-1000.5))) == "panic-offset"
    assert outcome(check(reply(offset_s=999.0))) == "ok"


def test_a_negative_delay_within_the_clocks_precision_reads_as_zero() -> None:
    # T4 - T1 = 199.5 us, T3 - T2 = 200 us: half a microsecond below zero.
    sample = check(reply(), t4=T1 + 199_500)
    assert isinstance(sample, Sample)
    assert sample.delay_s == 0.0


def test_a_negative_delay_beyond_the_clocks_precision_is_discarded_not_clamped() -> None:
    result = check(reply(), t4=T1 + 100_000)  # answered 100 us "before" the server sent it
    assert outcome(result) == "bad-packet"
    assert "negative round-trip delay" in result.detail  # type: ignore[union-attr]


def test_a_server_claiming_a_huge_precision_cannot_excuse_a_negative_delay() -> None:
    result = check(reply(precision=127), t4=T1 + 100_000)
    assert outcome(result) == "ok"  # 100 us is inside the 1 ms a server may claim
    result = check(reply(precision=127), t4=T1 - 10_000_000)
    assert outcome(result) == "bad-packet"


def test_replies_are_read_in_the_era_of_the_local_clock_across_2036() -> None:
    rollover_ns = ((1 << 32) - 2_208_988_800) * NS
    t1 = rollover_ns - 100_000  # sent 0.1 ms before the rollover, answered after it
    t2 = t1 + 400_000
    packet = dataclasses.replace(
        reply(), receive_ts=unix_ns_to_ntp(t2), transmit_ts=unix_ns_to_ntp(t2 + 200_000)
    )
    assert packet.receive_ts >> 32 == 0  # the seconds field has wrapped
    sample = check_reply(packet, t1, t1 + 1_000_000, SETTINGS)
    assert isinstance(sample, Sample)
    assert sample.offset_s == pytest.approx(0.0, abs=1e-6)


# --- chrony's tests by label and in chrony's order ------------------------------------------


def test_1_a_duplicate_of_the_previous_reply_in_a_burst_is_a_bad_packet() -> None:
    first = check(reply())
    assert isinstance(first, Sample)
    result = check_reply(reply(), T1, T1 + 1_000_000, SETTINGS, previous=first.stamps)
    assert outcome(result) == "bad-packet"
    assert result.detail.startswith("test 1:")  # type: ignore[union-attr]


def test_6_runs_before_test_a_an_unsynchronised_server_is_named_so_not_a_slow_one() -> None:
    good = reply(leap=3)
    slow = dataclasses.replace(good, transmit_ts=good.receive_ts + (5 << 32))
    assert outcome(check(slow)) == "unsynchronised"


def test_7_is_the_fixed_16_s_bound_and_maxdistance_the_configurable_one() -> None:
    loose = dataclasses.replace(SETTINGS, max_distance_s=100.0)
    beyond_7 = check_reply(reply(root_dispersion_s=16.5), T1, T1 + 1_000_000, loose)
    assert beyond_7.detail.startswith("test 7:")  # type: ignore[union-attr]
    beyond_max = check(reply(root_dispersion_s=3.5))
    assert "maxdistance" in beyond_max.detail  # type: ignore[union-attr]
    assert outcome(check_reply(reply(root_dispersion_s=3.5), T1, T1 + 1_000_000, loose)) == "ok"


def test_a_failure_logs_the_tests_passed_before_it_at_debug_level(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="clockfleet.ntp")
    check(reply(stratum=16))
    assert "NTP tests passed 1 2 3 5, failed 6" in caplog.text
