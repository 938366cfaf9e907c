"""The 48-byte NTP codec and era-aware timestamp conversion (2036 rollover)."""

from __future__ import annotations

import calendar

import pytest

from clockfleet.ntp.packet import (
    MODE_CLIENT,
    NTP_UNIX_DELTA_S,
    PacketError,
    decode,
    encode_request,
    kiss_code,
    ntp_to_unix_ns,
    unix_ns_to_ntp,
)

NS = 1_000_000_000
# 2036-02-07 06:28:16 UTC: the NTP seconds field wraps from 2^32 - 1 to 0 here.
ROLLOVER_UNIX_S = (1 << 32) - NTP_UNIX_DELTA_S


def unix_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, 0)) * NS


def test_request_is_mode_3_version_4_with_the_nonce_as_transmit_timestamp() -> None:
    data = encode_request(0x0123456789ABCDEF)
    packet = decode(data)
    assert len(data) == 48
    assert (packet.mode, packet.version, packet.leap) == (MODE_CLIENT, 4, 0)
    assert packet.transmit_ts == 0x0123456789ABCDEF
    assert packet.origin_ts == packet.receive_ts == packet.reference_ts == 0


def test_request_reveals_nothing_of_the_local_clock_but_the_nonce() -> None:
    assert encode_request(1)[:40] == encode_request(2)[:40] == bytes([0x23]) + bytes(39)


@pytest.mark.parametrize("length", [0, 40, 47])
def test_decode_refuses_a_packet_shorter_than_the_header(length: int) -> None:
    with pytest.raises(PacketError, match="shorter"):
        decode(bytes(length))


def test_decode_refuses_a_length_that_is_not_a_multiple_of_4() -> None:
    with pytest.raises(PacketError, match="multiple of 4"):
        decode(bytes(50))


def test_decode_ignores_extension_fields_after_the_header() -> None:
    assert decode(encode_request(7) + bytes(20)).transmit_ts == 7


def test_root_delay_and_dispersion_are_16_16_fixed_point_seconds() -> None:
    data = bytearray(48)
    data[4:8] = (3 << 16 | 0x8000).to_bytes(4, "big")  # 3.5 s
    data[8:12] = (1 << 14).to_bytes(4, "big")  # 0.25 s
    packet = decode(bytes(data))
    assert (packet.root_delay_s, packet.root_dispersion_s) == (3.5, 0.25)


@pytest.mark.parametrize(
    "when",
    [
        unix_ns(2026, 11, 26, 12, 0) + 123_456_789,
        unix_ns(1970, 1, 1),
        ROLLOVER_UNIX_S * NS - 1_000,
        ROLLOVER_UNIX_S * NS,
        ROLLOVER_UNIX_S * NS + 500_000_000,
        unix_ns(2100, 1, 1),
    ],
)
def test_round_trip_through_ntp_timestamps_keeps_sub_nanosecond_precision(when: int) -> None:
    assert abs(ntp_to_unix_ns(unix_ns_to_ntp(when), when) - when) <= 1


def test_seconds_field_wraps_to_zero_at_the_2036_rollover() -> None:
    assert unix_ns_to_ntp(ROLLOVER_UNIX_S * NS) >> 32 == 0
    assert unix_ns_to_ntp(ROLLOVER_UNIX_S * NS - NS) >> 32 == 0xFFFFFFFF


def test_a_small_era_1_timestamp_is_read_as_after_2036_by_a_clock_near_2036() -> None:
    after = ROLLOVER_UNIX_S * NS + 10 * NS
    local = ROLLOVER_UNIX_S * NS - 5 * NS  # the local clock is just before the rollover
    assert ntp_to_unix_ns(unix_ns_to_ntp(after), local) == after


def test_a_late_era_0_timestamp_is_read_as_before_2036_by_a_clock_just_after_it() -> None:
    before = ROLLOVER_UNIX_S * NS - 10 * NS
    local = ROLLOVER_UNIX_S * NS + 5 * NS
    assert ntp_to_unix_ns(unix_ns_to_ntp(before), local) == before


def test_the_same_timestamp_means_1968_or_2104_depending_on_the_local_clock() -> None:
    ts = 1 << 63  # seconds field 2^31: 1968-01-20 in era 0, 2104-02-26 in era 1
    assert ntp_to_unix_ns(ts, unix_ns(1970, 1, 1)) == unix_ns(1968, 1, 20, 3, 14) + 8 * NS
    assert ntp_to_unix_ns(ts, unix_ns(2090, 1, 1)) == unix_ns(2104, 2, 26, 9, 42) + 24 * NS


@pytest.mark.parametrize(
    ("ref_id", "code"),
    [(b"RATE", "RATE"), (b"DENY", "DENY"), (b"NKEY", "NKEY"), (b"X\0\0\0", "X")],
)
def test_kiss_code_reads_upper_case_ascii_ref_ids(ref_id: bytes, code: str) -> None:
    assert kiss_code(ref_id) == code


@pytest.mark.parametrize("ref_id", [b"\0\0\0\0", b"\x7f\x00\x00\x01", b"rate", b"\x01\x02\x03\x04"])
def test_kiss_code_is_none_for_ref_ids_that_are_not_kiss_codes(ref_id: bytes) -> None:
    assert kiss_code(ref_id) is None
