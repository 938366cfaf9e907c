"""NTS against a real server: chronyd on loopback with a certificate from a test CA."""

from __future__ import annotations

import pytest

from clockfleet.devstack.nts_server import NtsPki, NtsServer
from clockfleet.ntp.checks import ProbeSettings
from clockfleet.ntp.exchange import BurstResult, run_steps
from clockfleet.ntp.nts_exchange import NtsClient, nts_burst_steps
from clockfleet.ntp.nts_tls import NtsKeys, NtsTrust, key_exchange
from tests.ntp_nts.conftest import RELAY_ADDRESS
from tests.ntp_nts.ntskit import FlipRelay, ipv4

pytestmark = pytest.mark.integration


def client_for(pki: NtsPki) -> NtsClient:
    return NtsClient(trust=NtsTrust((str(pki.ca_cert),)))


def burst(client: NtsClient, server: NtsServer, host: str = "127.0.0.1") -> BurstResult:
    key = (host, server.ke_port, 123)
    result, _address = run_steps(nts_burst_steps(client, key, ipv4(), ProbeSettings()))
    return result


def test_handshake_gives_two_keys_eight_cookies_and_the_servers_ntp_port(
    nts_server: NtsServer, pki: NtsPki
) -> None:
    keys = key_exchange(
        "127.0.0.1", nts_server.ke_port, 123, ipv4(), NtsTrust((str(pki.ca_cert),)), 5.0
    )
    assert isinstance(keys, NtsKeys)
    assert len(keys.c2s) == len(keys.s2c) == 32 and keys.c2s != keys.s2c
    assert len(keys.cookies) == 8
    assert keys.ntp_address == ("127.0.0.1", nts_server.ntp_port)  # chrony names its port


def test_handshake_verifies_a_dns_name_in_the_certificate(
    nts_server: NtsServer, pki: NtsPki
) -> None:
    keys = key_exchange(
        "localhost", nts_server.ke_port, 123, ipv4(), NtsTrust((str(pki.ca_cert),)), 5.0
    )
    assert isinstance(keys, NtsKeys)


def test_authenticated_burst_syncs(nts_server: NtsServer, pki: NtsPki) -> None:
    result = burst(client_for(pki), nts_server)
    assert result.failure is None and result.sample is not None
    assert abs(result.sample.offset_s) < 0.01 and result.sample.stratum == 8
    assert result.requests == ProbeSettings().samples


def test_resync_spends_kept_cookies_without_a_second_handshake(
    nts_server: NtsServer, pki: NtsPki
) -> None:
    client = client_for(pki)
    assert burst(client, nts_server).sample is not None
    assert burst(client, nts_server).sample is not None
    assert client.jar.handshakes == 1
    session = client.jar.session(("127.0.0.1", nts_server.ke_port, 123))
    assert session is not None and session.held == 8  # every answer refilled the jar


def test_negotiated_ntp_server_is_where_ntp_goes(
    relayed_nts_server: NtsServer, pki: NtsPki
) -> None:
    upstream = ("127.0.0.1", relayed_nts_server.ntp_port)
    with FlipRelay(upstream, None, RELAY_ADDRESS, relayed_nts_server.ntp_port) as relay:
        result = burst(client_for(pki), relayed_nts_server)
        assert result.sample is not None and relay.replies == result.requests


@pytest.mark.parametrize("byte", [40, 47, -1], ids=["transmit-time", "transmit-low", "tag"])
def test_reply_with_one_flipped_byte_fails_authentication(
    relayed_nts_server: NtsServer, pki: NtsPki, byte: int
) -> None:
    upstream = ("127.0.0.1", relayed_nts_server.ntp_port)
    with FlipRelay(upstream, byte, RELAY_ADDRESS, relayed_nts_server.ntp_port) as relay:
        result = burst(client_for(pki), relayed_nts_server)
    assert relay.replies >= 1 and result.sample is None
    assert result.failure is not None and result.failure.outcome == "nts-auth-failed"
