"""Each way NTS-KE can fail has its own outcome, and none leads to plain NTP."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from clockfleet.devstack import free_port
from clockfleet.devstack.nts_server import NtsPki, NtsServer, make_test_pki
from clockfleet.ntp import nts_ke
from clockfleet.ntp.nts_tls import KeFailed, NtsTrust, key_exchange
from tests.ntp_nts.ntskit import NTPV4, SIV, FakeKeServer, answer, ipv4

pytestmark = pytest.mark.integration

COOKIE = nts_ke.record(nts_ke.COOKIE, b"c" * 100, critical=False)


def exchange(host: str, port: int, ca: Path) -> KeFailed:
    got = key_exchange(host, port, 123, ipv4(), NtsTrust((str(ca),), system=False), 5.0)
    assert isinstance(got, KeFailed), got
    return got


def test_closed_ke_port_is_ke_refused(pki: NtsPki) -> None:
    got = exchange("127.0.0.1", free_port(), pki.ca_cert)
    assert got.failure.outcome == "nts-ke-refused" and "refused" in got.failure.detail


def test_error_record_is_ke_refused(pki: NtsPki) -> None:
    error = nts_ke.record(nts_ke.ERROR, b"\0\x01")
    with FakeKeServer(pki.cert, pki.key, answer(error)) as fake:
        got = exchange("127.0.0.1", fake.port, pki.ca_cert)
    assert got.failure.outcome == "nts-ke-refused" and "error 1" in got.failure.detail


def test_answer_without_cookies_is_no_cookies(pki: NtsPki) -> None:
    with FakeKeServer(pki.cert, pki.key, answer(NTPV4, SIV)) as fake:
        got = exchange("127.0.0.1", fake.port, pki.ca_cert)
        assert fake.requests == [nts_ke.request()]
    assert got.failure.outcome == "nts-no-cookies"


def test_server_without_alpn_ntske_is_ke_refused(pki: NtsPki) -> None:
    fake = FakeKeServer(pki.cert, pki.key, answer(NTPV4, SIV, COOKIE))
    fake.ctx.set_alpn_protocols(["http/1.1"])
    with fake:
        got = exchange("127.0.0.1", fake.port, pki.ca_cert)
    assert got.failure.outcome == "nts-ke-refused" and "ntske/1" in got.failure.detail


def test_tls_1_2_server_is_ke_refused(pki: NtsPki) -> None:
    fake = FakeKeServer(pki.cert, pki.key, answer(NTPV4, SIV, COOKIE))
    fake.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    fake.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with fake:
        got = exchange("127.0.0.1", fake.port, pki.ca_cert)
    assert got.failure.outcome == "nts-ke-refused" and "handshake" in got.failure.detail


def test_certificate_of_an_untrusted_ca_is_bad_certificate(
    nts_server: NtsServer, short_tmp: Path
) -> None:
    other = make_test_pki(short_tmp / "other", ca_name="someone else's CA")
    got = exchange("127.0.0.1", nts_server.ke_port, other.ca_cert)
    assert got.failure.outcome == "nts-bad-certificate" and not got.dates_refused
    assert "verify failed" in got.failure.detail


def test_certificate_for_another_name_is_bad_certificate(short_tmp: Path) -> None:
    pki = make_test_pki(short_tmp / "pki", names=("ntp.example.net",))
    with FakeKeServer(pki.cert, pki.key, answer(NTPV4, SIV, COOKIE)) as fake:
        got = exchange("127.0.0.1", fake.port, pki.ca_cert)
    assert got.failure.outcome == "nts-bad-certificate"
    assert "does not name the address 127.0.0.1" in got.failure.detail


def test_ke_server_that_never_answers_times_out(short_tmp: Path, pki: NtsPki) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks TLS
        port = silent.getsockname()[1]
        got = key_exchange(
            "127.0.0.1", port, 123, ipv4(), NtsTrust((str(pki.ca_cert),), system=False), 0.3
        )
    assert isinstance(got, KeFailed) and got.failure.outcome == "timeout"
