"""The agent with NTS entries: its probe speaks NTS to them, keeps their cookies between
syncs, refuses tampered answers and moves on, and its report says which entries were NTS."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clockfleet.agent.probe import NtsProbe, ProbeSettings, probe
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.devstack.nts_server import NtsPki, NtsServer
from clockfleet.ntp.nts_exchange import NtsClient
from clockfleet.ntp.nts_tls import NtsTrust
from clockfleet.protocol import codec
from clockfleet.protocol.messages import Report
from tests.agent.servicekit import PREFIX, Keys, Publisher, list_object
from tests.ntp_nts.conftest import RELAY_ADDRESS
from tests.ntp_nts.ntskit import FlipRelay

pytestmark = pytest.mark.integration


def nts_probe(server: NtsServer, pki: NtsPki, client: NtsClient | None = None) -> NtsProbe:
    client = client or NtsClient(trust=NtsTrust((str(pki.ca_cert),)))
    return NtsProbe({("127.0.0.1", 123): server.ke_port}, client)


def test_probe_syncs_an_nts_entry_and_marks_it_nts(nts_server: NtsServer, pki: NtsPki) -> None:
    result = probe([("127.0.0.1", 123)], ProbeSettings(), nts=nts_probe(nts_server, pki))
    assert result.ok and result.chosen is not None
    assert result.chosen.auth == "nts" and result.chosen.address == "127.0.0.1"


def test_resync_needs_no_second_handshake(nts_server: NtsServer, pki: NtsPki) -> None:
    nts = nts_probe(nts_server, pki)
    assert probe([("127.0.0.1", 123)], ProbeSettings(), nts=nts).ok
    assert probe([("127.0.0.1", 123)], ProbeSettings(), nts=nts).ok
    assert nts.client is not None and nts.client.jar.handshakes == 1


def test_tampered_answers_fail_authentication_and_the_next_server_wins(
    relayed_nts_server: NtsServer, pki: NtsPki, chrony_server
) -> None:
    plain = chrony_server()
    upstream = ("127.0.0.1", relayed_nts_server.ntp_port)
    with FlipRelay(upstream, 47, RELAY_ADDRESS, relayed_nts_server.ntp_port) as relay:
        result = probe(
            [("127.0.0.1", 123), (plain.host, plain.port)],
            ProbeSettings(),
            nts=nts_probe(relayed_nts_server, pki),
        )
    assert relay.replies >= 1
    first, second = result.tried
    assert first.outcome == "nts-auth-failed" and first.auth == "nts"
    assert second.outcome == "ok" and second.auth is None
    assert result.chosen is not None and result.chosen.host == plain.host


def test_nts_entry_without_a_trusted_certificate_is_never_asked_in_plain_ntp(
    nts_server: NtsServer, short_tmp: Path
) -> None:
    from clockfleet.devstack.nts_server import make_test_pki

    other = make_test_pki(short_tmp / "other", ca_name="another CA")
    client = NtsClient(trust=NtsTrust((str(other.ca_cert),), system=False))
    result = probe([("127.0.0.1", 123)], ProbeSettings(), nts=nts_probe(nts_server, other, client))
    (only,) = result.tried
    assert not result.ok and only.outcome == "nts-bad-certificate" and only.requests == 0


def run_once(broker: ShippedBroker, keys: Keys, state: Path, *extra: str) -> dict:
    argv = [sys.executable, "-m", "clockfleet", "agent", "--id", "a1", "--region", "r1"]
    argv += ["--once", "--backend", "observe", *broker.login("a1"), "--trust-key", str(keys.pub)]
    argv += ["--state-dir", str(state), "--no-timezone", "--timeout", "15", *extra]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout, done.stderr
    codec.decode(Report, done.stdout.encode(), topic_id="a1")  # what readers accept
    return dict(json.loads(done.stdout))


def nts_list(publisher: Publisher, server: NtsServer, *plain: tuple[str, int]) -> None:
    entries = [{"host": "localhost", "port": 123, "nts": True, "nts_ke_port": server.ke_port}]
    entries += [{"host": h, "port": p} for h, p in plain]
    obj = list_object("r1", 7, [])
    obj.update(schema="clock.servers/2", servers=entries)
    publisher.raw(f"{PREFIX}/regions/r1/servers", publisher.signed(obj))


def test_agent_once_syncs_with_nts_and_reports_it(
    broker: ShippedBroker,
    keys: Keys,
    publisher: Publisher,
    nts_server: NtsServer,
    pki: NtsPki,
    short_tmp: Path,
) -> None:
    nts_list(publisher, nts_server)
    report = run_once(broker, keys, short_tmp / "state", "--nts-ca-file", str(pki.ca_cert))
    assert report["ok"] is True and report["server"]["host"] == "localhost"
    assert report["tried"][0]["auth"] == "nts" and report["tried"][0]["outcome"] == "ok"


def test_agent_once_counts_an_nts_failure(
    broker: ShippedBroker,
    keys: Keys,
    publisher: Publisher,
    nts_server: NtsServer,
    chrony_server,
    short_tmp: Path,
) -> None:
    plain = chrony_server()
    nts_list(publisher, nts_server, (plain.host, plain.port))
    report = run_once(broker, keys, short_tmp / "state")  # no --nts-ca-file: the test CA is unknown
    assert [t["outcome"] for t in report["tried"]] == ["nts-bad-certificate", "ok"]
    assert "auth" not in report["tried"][1]
    status = json.loads((short_tmp / "state" / "status.json").read_text())
    assert status["counters"]["nts-bad-certificate"] == 1
