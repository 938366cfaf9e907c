"""NATS identities over their life: added, revoked (regenerate security.conf, reload every node:
the revoked identity is disconnected and refused), and what make-security-conf writes; plus
what the monitoring port gives away. The cluster: natskit.py."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from clockfleet.devstack.mosquitto import ROLES
from clockfleet.devstack.nats import SECURITY_TOOL, NatsCluster
from tests.broker.mqttclient import ConnectRefused, connect
from tests.broker.natskit import REPORT, login, needs_nats
from tests.helpers import REPO

pytestmark = needs_nats


# --- Adding agents: regenerate, reload ---------------------------------------------------------


def test_an_agent_added_later_logs_in_on_every_node_without_a_restart(cluster: NatsCluster):
    pids = [n.daemon.proc.pid for n in cluster.nodes]  # type: ignore[union-attr]
    cluster.add("acme-10")
    assert [n.daemon.proc.pid for n in cluster.nodes] == pids  # type: ignore[union-attr]
    for node in range(3):
        login(cluster, "acme-10", node).close()


def test_adding_an_agent_keeps_the_connected_clients(cluster: NatsCluster):
    collector = login(cluster, "collector", node=1)
    try:
        cluster.add("acme-11")
        agent = login(cluster, "acme-11", node=1)
        try:
            collector.subscribe(REPORT.format("acme-11"))
            agent.publish(REPORT.format("acme-11"), b"new host")
            assert collector.wait(lambda: collector.on(REPORT.format("acme-11")))
        finally:
            agent.close()
        assert collector.disconnects == []
    finally:
        collector.close()


# --- Revoking agents: regenerate, reload ---------------------------------------------------------


def test_a_revoked_agent_is_disconnected_within_5_s_and_refused_on_every_node(
    cluster: NatsCluster,
):
    """clockfleet-identities --revoke, make-security-conf, SIGHUP on every node: each node
    checks its connected clients against the new users and closes the revoked one."""
    cluster.add("acme-20")
    secret = cluster.password("acme-20")
    agent = login(cluster, "acme-20", node=2, client_id="clockfleet-agent-acme-20-x")
    agent.client.reconnect_delay_set(30, 60)  # one disconnect, no retry in the test's time
    try:
        t0 = time.monotonic()
        cluster.revoke("acme-20")
        assert agent.wait(lambda: agent.disconnects != [], timeout_s=5.0)
        assert time.monotonic() - t0 < 5.0
    finally:
        agent.close()
    for node in range(3):
        with pytest.raises(ConnectRefused):
            connect(cluster.nodes[node].mqtt_port, "acme-20", secret, protocol=mqtt.MQTTv311)


def test_revoking_an_agent_keeps_the_other_clients_connected(cluster: NatsCluster):
    cluster.add("acme-21", "acme-22")
    collector = login(cluster, "collector", node=1)
    other = login(cluster, "acme-22", node=1)
    try:
        cluster.revoke("acme-21")
        collector.subscribe(REPORT.format("acme-22"))
        other.publish(REPORT.format("acme-22"), b"still here")
        assert collector.wait(lambda: collector.on(REPORT.format("acme-22")))
        assert collector.disconnects == [] and other.disconnects == []
    finally:
        other.close()
        collector.close()


# --- make-security-conf ------------------------------------------------------------------------


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SECURITY_TOOL), *args], capture_output=True, text=True, timeout=60
    )


def bcrypt_line(name: str) -> str:
    return f"{name}:$2b$04${'x' * 53}\n"


def test_make_security_conf_refuses_a_line_that_is_not_a_bcrypt_hash(tmp_path: Path):
    """NATS takes a password that is not a bcrypt hash as a clear-text one."""
    lines = [bcrypt_line(role) for role in ROLES]
    (tmp_path / "nats-users").write_text("".join(lines) + "acme-01:hunter2-but-much-longer\n")
    done = run_tool("--identities", str(tmp_path), "--out", str(tmp_path / "security.conf"))
    assert done.returncode == 2
    assert f"nats-users:{len(ROLES) + 1}: acme-01: not a bcrypt hash" in done.stderr
    assert not (tmp_path / "security.conf").exists()


def test_make_security_conf_refuses_identities_without_the_roles(tmp_path: Path):
    (tmp_path / "nats-users").write_text(bcrypt_line("acme-01"))
    done = run_tool("--identities", str(tmp_path), "--out", str(tmp_path / "security.conf"))
    assert done.returncode == 2
    assert "nats-users: no publisher" in done.stderr


def test_make_security_conf_follows_the_prefix(tmp_path: Path):
    (tmp_path / "nats-users").write_text("".join(bcrypt_line(n) for n in (*ROLES, "acme-01")))
    out = tmp_path / "security.conf"
    done = run_tool("--identities", str(tmp_path), "--out", str(out), "--prefix", "fleet/v2")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert '"fleet.v2.agents.acme-01.report"' in text and "clock.v1" not in text


def masked(text: str) -> list[str]:
    """The file's lines without what differs between two runs: hashes, the source path."""
    out = []
    for line in text.splitlines():
        if line.startswith("# EXAMPLE"):
            continue
        line = re.sub(r'password: "[^"]*"', 'password: "HASH"', line)
        out.append(re.sub(r"^# from .* \(prefix", "# from DIR (prefix", line))
    return out


def test_the_shipped_example_is_what_make_security_conf_writes(tmp_path: Path):
    names = (*ROLES, "acme-01", "acme-02")
    (tmp_path / "nats-users").write_text("".join(bcrypt_line(n) for n in names))
    out = tmp_path / "security.conf"
    assert run_tool("--identities", str(tmp_path), "--out", str(out)).returncode == 0
    example = REPO / "broker" / "nats" / "security.conf.example"
    assert masked(example.read_text()) == masked(out.read_text())


# --- The monitoring port ---------------------------------------------------------------------


def test_the_monitoring_port_shows_a_connected_mqtt_clients_password(cluster: NatsCluster):
    """NATS 2.9.10 keeps an MQTT client's password as the connection's JWT
    (server/mqtt.go: c.opts.JWT = c.opts.Password) and /connz?auth=true prints it
    (server/monitor.go: ci.JWT = client.opts.JWT): whoever reaches the http port can log in
    as every connected identity. Hence node.conf.template's http on loopback only."""
    agent = login(cluster, "acme-02", node=2, client_id="shown-on-connz")
    try:
        conns = cluster.nodes[2].monitor("/connz?auth=true&limit=1024")["connections"]
        mine = [c for c in conns if c.get("mqtt_client") == "shown-on-connz"]
        assert [c.get("jwt") for c in mine] == [cluster.password("acme-02")]
    finally:
        agent.close()
