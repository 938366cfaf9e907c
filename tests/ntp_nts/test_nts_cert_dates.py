"""An NTS-KE certificate's dates meet the far-off clock as the broker's do: waived only on
evidence the host can trust that its clock is behind (agent/.../clock_evidence.py)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.agent.clock_evidence import Floor, behind_evidence, release_floor
from clockfleet.devstack.nts_server import NtsServer, make_test_pki, start_nts_server
from clockfleet.ntp.checks import ProbeSettings
from clockfleet.ntp.exchange import BurstResult, run_steps
from clockfleet.ntp.nts_exchange import NtsClient, nts_burst_steps
from clockfleet.ntp.nts_tls import NtsTrust
from tests.ntp_nts.ntskit import ipv4

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.timezone.utc)


def server_with_dates(tmp: Path, not_before: dt.datetime, not_after: dt.datetime) -> NtsServer:
    pki = make_test_pki(tmp / "pki", not_before=not_before, not_after=not_after)
    return start_nts_server(tmp / "nts", pki)


@pytest.fixture
def not_yet_valid(short_tmp: Path) -> Iterator[NtsServer]:
    """A certificate issued ten days from now, as a host 10 days behind sees today's."""
    server = server_with_dates(short_tmp, NOW + dt.timedelta(days=10), NOW + dt.timedelta(days=90))
    yield server
    server.stop()


@pytest.fixture
def expired(short_tmp: Path) -> Iterator[NtsServer]:
    server = server_with_dates(short_tmp, NOW - dt.timedelta(days=90), NOW - dt.timedelta(days=1))
    yield server
    server.stop()


def sync(server: NtsServer, evidence: str | None) -> tuple[BurstResult, list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []
    client = NtsClient(
        trust=NtsTrust((str(server.pki.ca_cert),), system=False),
        clock_behind=lambda: evidence,
        event=lambda kind, detail: events.append((kind, detail)),
    )
    key = ("127.0.0.1", server.ke_port, 123)
    result, _ = run_steps(nts_burst_steps(client, key, ipv4(), ProbeSettings()))
    return result, events


def test_right_clock_refuses_an_expired_certificate(expired: NtsServer) -> None:
    evidence = behind_evidence(time.time(), [release_floor()])
    assert evidence is None
    result, events = sync(expired, evidence)
    assert result.failure is not None and result.failure.outcome == "nts-bad-certificate"
    detail = result.failure.detail
    assert "not valid at this host's clock" in detail and "nothing shows" in detail
    assert [kind for kind, _ in events] == ["nts-cert-dates-refused"]


def test_right_clock_refuses_a_not_yet_valid_certificate(not_yet_valid: NtsServer) -> None:
    result, events = sync(not_yet_valid, behind_evidence(time.time(), [release_floor()]))
    assert result.failure is not None and result.failure.outcome == "nts-bad-certificate"
    assert [kind for kind, _ in events] == ["nts-cert-dates-refused"]


def test_clock_provably_behind_waives_the_dates_and_syncs(not_yet_valid: NtsServer) -> None:
    later = Floor(time.time() + 20 * 86400, "the issue time of list v7")
    evidence = behind_evidence(time.time(), [release_floor(), later])
    assert evidence is not None
    result, events = sync(not_yet_valid, evidence)
    assert result.sample is not None
    assert events == [("nts-time-check-waived", evidence)]


def test_evidence_never_waives_anything_but_dates(short_tmp: Path) -> None:
    pki = make_test_pki(
        short_tmp / "pki",
        names=("ntp.example.net",),
        not_before=NOW - dt.timedelta(days=90),
        not_after=NOW - dt.timedelta(days=1),
    )
    server = start_nts_server(short_tmp / "nts", pki)
    try:
        result, _events = sync(server, "the clock reads 2000-01-01, 9000 days before ...")
    finally:
        server.stop()
    assert result.failure is not None and result.failure.outcome == "nts-bad-certificate"
    assert "does not name" in result.failure.detail
