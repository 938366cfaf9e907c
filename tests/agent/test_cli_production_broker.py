"""The agent against the production broker config (broker/): TLS, its own identity, the ACL.
The list comes from the `publisher` identity; the agent reads it over TLS, syncs, and its
retained report is readable by the `collector` identity (the ACL let it write there)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.agent.service import Agent
from clockfleet.devstack.mosquitto import ShippedBroker, start_shipped
from clockfleet.protocol import signing
from tests.agent.servicekit import PREFIX, hosted, list_object, make_agent, make_keys, wait_until


def tls_client(broker: ShippedBroker, identity: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{identity}")
    c.username_pw_set(identity, broker.password(identity))
    c.tls_set_context(ssl.create_default_context(cafile=str(broker.certs / "ca.crt")))
    return c


def test_agent_once_over_tls_with_its_own_identity_under_the_acl(chrony_server, short_tmp: Path):
    broker = start_shipped(short_tmp / "b", ["acme-01"])
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    try:
        pub = tls_client(broker, "publisher")
        pub.connect("localhost", broker.tls_port)
        pub.loop_start()
        signed = signing.sign(list_object("r1", 2, [(ntp.host, ntp.port)]), keys.key)
        pub.publish(f"{PREFIX}/regions/r1/servers", json.dumps(signed), 1, True).wait_for_publish(
            10
        )
        pub.disconnect()
        pub.loop_stop()

        done = subprocess.run(
            [
                sys.executable, "-m", "clockfleet", "agent", "--id", "acme-01", "--region", "r1",
                "--once", "--backend", "observe", "--no-timezone",
                "--state-dir", str(short_tmp / "state"), "--trust-key", str(keys.pub),
                "--broker", broker.tls_url, "--username", "acme-01",
                "--password-file", str(broker.password_file("acme-01")),
                "--ca-file", str(broker.certs / "ca.crt"),
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

        got: list[bytes] = []
        coll = tls_client(broker, "collector")
        coll.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/agents/+/report", 0)
        coll.on_message = lambda c, u, m: got.append(m.payload)
        coll.connect("localhost", broker.tls_port)
        coll.loop_start()
        try:
            wait_until(lambda: got, timeout_s=10)
        finally:
            coll.disconnect()
            coll.loop_stop()
        assert json.loads(got[-1]) == json.loads(done.stdout)
    finally:
        broker.daemon.stop()


def test_hosted_agent_over_tls_says_online_and_reports(chrony_server, short_tmp: Path):
    broker = start_shipped(short_tmp / "b", ["acme-02"])
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    seen: list[dict] = []
    coll = tls_client(broker, "collector")
    coll.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/agents/acme-02/+", 1)
    coll.on_message = lambda c, u, m: seen.append(json.loads(m.payload)) if m.payload else None
    coll.connect("localhost", broker.tls_port)
    coll.loop_start()
    try:
        pub = tls_client(broker, "publisher")
        pub.connect("localhost", broker.tls_port)
        pub.loop_start()
        signed = signing.sign(list_object("r1", 3, [(ntp.host, ntp.port)]), keys.key)
        pub.publish(f"{PREFIX}/regions/r1/servers", json.dumps(signed), 1, True).wait_for_publish(
            10
        )
        pub.disconnect()
        pub.loop_stop()

        template = make_agent(broker, "acme-02", keys=keys)
        conn = broker.settings("acme-02", tls=True)
        agent = Agent(template.settings, conn, backend=template.backend)
        with hosted(agent):
            try:
                wait_until(lambda: any(m.get("state") == "online" for m in seen), timeout_s=20)
                wait_until(lambda: any(m.get("list_version") == 3 for m in seen), timeout_s=20)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; seen {seen}; agent {dict(agent.counters)}") from None
    finally:
        coll.disconnect()
        coll.loop_stop()
        broker.daemon.stop()
    assert [m["session"] for m in seen if m.get("state") == "online"] == [1], seen
