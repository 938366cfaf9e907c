"""NTS fixtures: a test CA and chronyd serving NTS with its certificate, on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.devstack.nts_server import NtsPki, NtsServer, make_test_pki, start_nts_server
from tests.agent.conftest import keys, publisher  # noqa: F401 - the agent's fixtures, shared


@pytest.fixture
def pki(short_tmp: Path) -> NtsPki:
    return make_test_pki(short_tmp / "pki")


@pytest.fixture
def nts_server(short_tmp: Path, pki: NtsPki) -> Iterator[NtsServer]:
    """chronyd (-x) serving NTS-KE and NTS-authenticated NTP on 127.0.0.1, free ports."""
    server = start_nts_server(short_tmp / "nts", pki)
    yield server
    server.stop()


@pytest.fixture
def relayed_nts_server(short_tmp: Path, pki: NtsPki) -> Iterator[NtsServer]:
    """chronyd serving NTS whose NTS-KE answers send NTP to 127.0.0.5 on chronyd's own NTP
    port: where a test puts a relay (ntskit.FlipRelay(..., host="127.0.0.5", port=...))."""
    server = start_nts_server(short_tmp / "nts", pki, ntp_server=RELAY_ADDRESS)
    yield server
    server.stop()


RELAY_ADDRESS = "127.0.0.5"
