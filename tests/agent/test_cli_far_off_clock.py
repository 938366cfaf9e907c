"""A host whose clock is far off gets its list, syncs and reports: `clockfleet agent --once`
as a process, under libfaketime, against the production broker config's TLS listener (whose
certificate is "not yet valid" at a clock 400 days behind) and real chronyd servers."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker, start_shipped
from clockfleet.protocol import signing
from tests.agent.servicekit import PREFIX, list_object, make_keys

DAY = 86400.0


@pytest.fixture
def tls_broker(short_tmp: Path):
    broker = start_shipped(short_tmp / "b", ["acme-01"])
    yield broker
    broker.daemon.stop()


def publish_list(
    broker: ShippedBroker, key: signing.SigningKey, servers: list[tuple[str, int]]
) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    c.username_pw_set("publisher", broker.password("publisher"))
    c.tls_set_context(ssl.create_default_context(cafile=str(broker.certs / "ca.crt")))
    c.connect("localhost", broker.tls_port)
    c.loop_start()
    signed = signing.sign(list_object("r1", 2, servers), key)
    c.publish(f"{PREFIX}/regions/r1/servers", json.dumps(signed), 1, True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def agent_once(
    broker: ShippedBroker, keys, state: Path, faketime: str | None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if faketime is not None:
        lib = devstack.libfaketime_path()
        assert lib is not None, "libfaketime is not installed (Debian package faketime)"
        env.update(LD_PRELOAD=lib, FAKETIME=faketime, FAKETIME_DONT_RESET="1")
    return subprocess.run(
        [
            sys.executable, "-m", "clockfleet", "agent", "--id", "acme-01", "--region", "r1",
            "--once", "--backend", "observe", "--no-timezone", "--log-level", "info",
            "--state-dir", str(state), "--trust-key", str(keys.pub),
            "--broker", broker.tls_url, "--username", "acme-01",
            "--password-file", str(broker.password_file("acme-01")),
            "--ca-file", str(broker.certs / "ca.crt"),
        ],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_a_host_400_days_behind_gets_its_list_over_tls_and_syncs(
    tls_broker: ShippedBroker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    servers = [chrony_server(), chrony_server()]
    publish_list(tls_broker, keys.key, [(s.host, s.port) for s in servers])

    done = agent_once(tls_broker, keys, short_tmp / "state", faketime="-400d")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["offset_s"] == pytest.approx(400 * DAY, abs=5)
    assert "panic limit" in report["note"]
    assert "without its validity dates" in done.stderr


def test_a_first_sync_to_two_servers_2_hours_ahead_reports_ok_with_that_offset(
    tls_broker: ShippedBroker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    servers = [chrony_server(fake_offset_s=7200.0), chrony_server(fake_offset_s=7200.0)]
    publish_list(tls_broker, keys.key, [(s.host, s.port) for s in servers])

    done = agent_once(tls_broker, keys, short_tmp / "state", faketime=None)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], [t["outcome"] for t in report["tried"]]) == (True, ["ok", "ok"])
    assert report["offset_s"] == pytest.approx(7200.0, abs=0.05)


def test_a_host_with_a_right_clock_checks_the_brokers_certificate_dates(
    tls_broker: ShippedBroker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    server = chrony_server()
    publish_list(tls_broker, keys.key, [(server.host, server.port)])
    done = agent_once(tls_broker, keys, short_tmp / "state", faketime=None)
    assert done.returncode == 0, done.stderr
    assert "validity dates" not in done.stderr
