"""Taking an identity away on the shipped Mosquitto: broker/clockfleet-identities --revoke (or
--rotate), SIGHUP, and --confirm, which returns once the broker runs the new password file.
Mosquitto 2.0 checks every connected client against the file it reloads and closes those it
no longer takes, without their will (measured; src/security_default.c sets the client to
"disconnecting" before closing it, and a disconnecting client sends no will).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import signal
import subprocess
import sys
import time
from types import ModuleType

import paho.mqtt.client as mqtt
import pytest

from clockfleet.devstack.mosquitto import IDENTITIES_TOOL, ShippedBroker
from tests.broker.mqttclient import ConnectRefused, MqttProbe, connect
from tests.helpers import wait_until

STATUS = "clock/v1/agents/{}/status"
REGION = "clock/v1/regions/us-east/servers"


def login(b: ShippedBroker, identity: str, secret: str | None = None, **kwargs) -> MqttProbe:
    if kwargs.pop("tls", False):
        kwargs.update(host="localhost", ca_file=str(b.ca_file))
        port = b.tls_port
    else:
        port = b.port
    return connect(port, identity, secret or b.password(identity), **kwargs)


@pytest.mark.parametrize("listener", ["loopback", "tls"])
def test_a_revoked_agent_that_is_connected_is_disconnected_within_5_s_and_cannot_reconnect(
    broker: ShippedBroker, listener: str
):
    tls = listener == "tls"
    secret = broker.password("acme-01")
    agent = login(broker, "acme-01", tls=tls)
    agent.client.reconnect_delay_set(30, 60)  # the disconnect is the broker's, not a retry's
    try:
        t0 = time.monotonic()
        broker.revoke("acme-01")
        assert agent.wait(lambda: agent.disconnects != [], timeout_s=5.0)
        assert time.monotonic() - t0 < 5.0
    finally:
        agent.close()
    with pytest.raises(ConnectRefused, match=r"Not authorized|Bad user"):
        login(broker, "acme-01", secret, tls=tls)


def test_a_revoked_agents_will_does_not_fire(broker: ShippedBroker):
    """A retired agent's `offline` will must not come back after its status was cleared."""
    watcher = login(broker, "operator")
    agent = login(broker, "acme-01", will=(STATUS.format("acme-01"), b"WILL"))
    agent.client.reconnect_delay_set(30, 60)
    try:
        watcher.subscribe(STATUS.format("acme-01"), STATUS.format("acme-02"))
        broker.revoke("acme-01")
        assert agent.wait(lambda: agent.disconnects != [])
        witness = login(broker, "acme-02")  # its status, sent afterwards, arrives after any will
        try:
            witness.publish(STATUS.format("acme-02"), b"witness")
        finally:
            witness.close()
        assert watcher.wait(lambda: watcher.on(STATUS.format("acme-02")))
        assert watcher.on(STATUS.format("acme-01")) == []
    finally:
        agent.close()
        watcher.close()


def test_revoking_one_agent_keeps_every_other_identity_connected(broker: ShippedBroker):
    others = [login(broker, who) for who in ("acme-02", "collector", "publisher")]
    revoked = login(broker, "acme-01")
    revoked.client.reconnect_delay_set(30, 60)
    try:
        broker.revoke("acme-01")
        assert revoked.wait(lambda: revoked.disconnects != [])
        assert [c.disconnects for c in others] == [[], [], []]
        assert others[0].publish(STATUS.format("acme-02"), b"{}").is_failure is False
    finally:
        revoked.close()
        for c in others:
            c.close()


def identities(broker: ShippedBroker, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(IDENTITIES_TOOL), "--out", str(broker.identities), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_rotated_secret_replaces_the_old_one_at_once(broker: ShippedBroker):
    old = broker.password("acme-01")
    agent = login(broker, "acme-01")
    agent.client.reconnect_delay_set(30, 60)
    pidfile = broker.rundir / "mosquitto.pid"
    pidfile.write_text(f"{broker.daemon.proc.pid}\n")
    try:
        done = identities(
            broker, "--rotate", "acme-01", "--reload-pidfile", str(pidfile), "--confirm", broker.url
        )
        assert done.returncode == 0, done.stderr
        assert "~ acme-01" in done.stdout and "in force:" in done.stdout
        assert agent.wait(lambda: agent.disconnects != [], timeout_s=5.0)
    finally:
        agent.close()
    with pytest.raises(ConnectRefused):
        login(broker, "acme-01", old)
    login(broker, "acme-01").close()  # the new secret, from the secrets directory


def test_confirm_over_tls_waits_for_the_reload_it_asked_for(broker: ShippedBroker):
    broker.add("acme-01")
    pidfile = broker.rundir / "mosquitto.pid"
    pidfile.write_text(f"{broker.daemon.proc.pid}\n")
    done = identities(
        broker, "acme-05", "--reload-pidfile", str(pidfile),
        "--confirm", broker.tls_url, "--ca-file", str(broker.ca_file),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    login(broker, "acme-05", tls=True).close()  # in force when the tool said so: no retry


def tool_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("clockfleet_identities", str(IDENTITIES_TOOL))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_reload_witness_may_neither_read_nor_write(broker: ShippedBroker):
    """Its secret lives only in the memory of the run that made it; were it known, it would
    still give nothing (broker/acl)."""
    tool = tool_module()
    secret = tool.new_secret()
    with (broker.identities / "passwd").open("a") as f:
        f.write(f"{tool.WITNESS}:{tool.mosquitto_hash(secret)}\n")
    broker.daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: tool.login_taken(broker.url, None, tool.WITNESS, secret), 10, "reload")
    publisher = login(broker, "publisher")
    witness = login(broker, tool.WITNESS, secret, protocol=mqtt.MQTTv5)
    try:
        publisher.publish(REGION, b"a list", retain=True)
        witness.subscribe("clock/v1/#")
        for topic in (REGION, STATUS.format(tool.WITNESS), "clock/v1/agents/acme-01/report"):
            assert witness.publish(topic, b"x").value == 135, topic  # not authorised
        publisher.publish(REGION, b"after")
        assert not witness.wait(lambda: witness.messages != [], timeout_s=0.5)
    finally:
        witness.close()
        publisher.close()
