"""The NTS-KE records we send, and every check on the answer (chrony's process_response)."""

from __future__ import annotations

import struct

import pytest

from clockfleet.ntp import nts_ke
from clockfleet.ntp.nts_ke import KeAnswer, KeRefusal, parse_answer, record
from tests.ntp_nts.ntskit import NTPV4, SIV, answer

COOKIE = record(nts_ke.COOKIE, b"c" * 100, critical=False)


def test_request_asks_for_ntpv4_with_aes_siv_cmac_256_and_ends() -> None:
    assert nts_ke.request() == bytes.fromhex(
        "80010002 0000 80040002 000f 80000000".replace(" ", "")
    )


def test_exporter_context_is_protocol_aead_and_direction() -> None:
    assert nts_ke.exporter_context(False) == b"\0\0\0\x0f\0"
    assert nts_ke.exporter_context(True) == b"\0\0\0\x0f\x01"


def test_good_answer_gives_its_cookies_server_and_port() -> None:
    server = record(nts_ke.NTPV4_SERVER, b"ntp.example.net")
    port = record(nts_ke.NTPV4_PORT, struct.pack("!H", 1123))
    got = parse_answer(answer(NTPV4, SIV, COOKIE, COOKIE, server, port))
    assert got == KeAnswer((b"c" * 100, b"c" * 100), "ntp.example.net", 1123)


def test_answer_keeps_at_most_eight_cookies() -> None:
    got = parse_answer(answer(NTPV4, SIV, *[COOKIE] * 10))
    assert isinstance(got, KeAnswer) and len(got.cookies) == 8


def test_answer_without_cookies_is_refused_as_no_cookies() -> None:
    got = parse_answer(answer(NTPV4, SIV))
    assert isinstance(got, KeRefusal) and got.no_cookies


@pytest.mark.parametrize(
    "cookie",
    [b"", b"abc", b"x" * 260],
    ids=["empty", "not-a-multiple-of-4", "too-long"],
)
def test_malformed_cookie_is_skipped_not_kept(cookie: bytes) -> None:
    got = parse_answer(answer(NTPV4, SIV, record(nts_ke.COOKIE, cookie, critical=False), COOKIE))
    assert isinstance(got, KeAnswer) and got.cookies == (b"c" * 100,)


@pytest.mark.parametrize(
    "records, why",
    [
        ((SIV, COOKIE), "no next protocol"),
        ((NTPV4, COOKIE), "no AEAD"),
        ((record(nts_ke.NEXT_PROTOCOL, b"\0\x01"), SIV, COOKIE), "not NTPv4"),
        ((record(nts_ke.NEXT_PROTOCOL, b"\0\0", critical=False), SIV, COOKIE), "not critical"),
        ((record(nts_ke.NEXT_PROTOCOL, b"\0\0\0\0"), SIV, COOKIE), "not NTPv4 alone"),
        ((NTPV4, record(nts_ke.AEAD_ALGORITHM, b"\0\x1e"), COOKIE), "AEAD algorithm"),
        ((NTPV4, SIV, COOKIE, record(nts_ke.ERROR, b"\0\x01")), "error 1 (bad request)"),
        ((NTPV4, SIV, COOKIE, record(nts_ke.WARNING, b"\0\x07")), "warning 7"),
        ((NTPV4, SIV, COOKIE, record(0x4321, b"")), "unknown critical record"),
        ((NTPV4, SIV, COOKIE, record(nts_ke.NTPV4_SERVER, b"bad name")), "server record"),
        ((NTPV4, SIV, COOKIE, record(nts_ke.NTPV4_PORT, b"\0\0")), "port record"),
        ((NTPV4, SIV, COOKIE, record(nts_ke.NTPV4_PORT, b"\0")), "port record"),
        ((NTPV4, SIV, COOKIE, record(0x4321, b"z" * 300)), "too long"),
    ],
)
def test_answer_breaking_a_rule_is_refused(records: tuple[bytes, ...], why: str) -> None:
    got = parse_answer(answer(*records))
    assert isinstance(got, KeRefusal) and not got.no_cookies
    assert why in got.detail


def test_unknown_non_critical_record_is_ignored() -> None:
    got = parse_answer(answer(NTPV4, SIV, record(0x4321, b"zz", critical=False), COOKIE))
    assert isinstance(got, KeAnswer)


def test_message_is_complete_only_at_its_end_of_message() -> None:
    whole = answer(NTPV4, SIV, COOKIE)
    assert all(nts_ke.message_complete(whole[:n]) is False for n in range(len(whole)))
    assert nts_ke.message_complete(whole) is True


@pytest.mark.parametrize(
    "data, why",
    [
        (answer(NTPV4) + b"\0\0", "after the End of Message"),
        (NTPV4 + record(nts_ke.END_OF_MESSAGE, critical=False), "malformed End of Message"),
        (NTPV4 + record(nts_ke.END_OF_MESSAGE, b"\0\0"), "malformed End of Message"),
        (record(0x4321, b"z" * 60000, critical=False), "longer than 16384"),
    ],
)
def test_message_that_cannot_end_well_is_refused(data: bytes, why: str) -> None:
    got = nts_ke.message_complete(data)
    assert isinstance(got, KeRefusal) and why in got.detail
