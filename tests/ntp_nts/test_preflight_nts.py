"""The publisher's preflight asks an NTS server with NTS, as agents will: never in plain NTP."""

from __future__ import annotations

import pytest

from clockfleet.devstack.nts_server import NtsPki, NtsServer
from clockfleet.publisher import preflight
from clockfleet.publisher.preflight import Target, query

pytestmark = pytest.mark.integration


def target(server: NtsServer) -> Target:
    return Target("eu-west", "127.0.0.1", 123, server.ke_port)


def test_preflight_syncs_an_nts_server_with_the_named_ca(
    nts_server: NtsServer, pki: NtsPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(preflight.NTS_CA_ENV, str(pki.ca_cert))
    result = query(target(nts_server))
    assert result.ok and result.outcome == "ok"


def test_preflight_refuses_an_nts_server_whose_ca_it_does_not_trust(
    nts_server: NtsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(preflight.NTS_CA_ENV, raising=False)
    result = query(target(nts_server))
    assert not result.ok and result.outcome == "nts-bad-certificate"
    assert "nts-bad-certificate" in preflight.line(result)


def test_an_nts_server_given_by_address_is_noted_and_one_given_by_name_is_not(
    nts_server: NtsServer, pki: NtsPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Debian 11's chronyd (4.0) does no NTS-KE with an address (tests/hosts/test_nts_systemd.py).
    monkeypatch.setenv(preflight.NTS_CA_ENV, str(pki.ca_cert))
    by_address = query(target(nts_server))
    by_name = query(Target("eu-west", "localhost", 123, nts_server.ke_port))
    assert by_address.ok and by_name.ok
    assert preflight.NTS_BY_ADDRESS in preflight.line(by_address)
    assert preflight.NTS_BY_ADDRESS not in preflight.line(by_name)
