"""The NATS cluster's shipped security configuration: each identity gets exactly what the
Mosquitto ACL (broker/acl) gives it, on every node. The cluster and the helpers that tell a
refused publish from a delivered one: natskit.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from clockfleet.devstack.mosquitto import ROLES
from clockfleet.devstack.nats import NatsCluster
from clockfleet.protocol import codec
from tests.broker.mqttclient import ConnectRefused, connect
from tests.broker.natskit import (
    CMD,
    GRANTED_QOS1,
    PROFILE,
    REFUSED,
    REGION,
    REPORT,
    STATUS,
    codes,
    delivered,
    delivered_to_operator,
    login,
    needs_nats,
    retained,
)
from tests.helpers import REPO

pytestmark = needs_nats


# --- Logging in ------------------------------------------------------------------------------


def test_anonymous_clients_are_refused(cluster: NatsCluster):
    with pytest.raises(ConnectRefused):
        connect(cluster.nodes[0].mqtt_port, protocol=mqtt.MQTTv311)


def test_a_wrong_password_is_refused(cluster: NatsCluster):
    with pytest.raises(ConnectRefused):
        connect(cluster.nodes[0].mqtt_port, "acme-01", "not-the-password", protocol=mqtt.MQTTv311)


@pytest.mark.parametrize("identity", ["acme-01", "operator"])
def test_the_identities_cannot_log_in_over_the_nats_protocol(cluster: NatsCluster, identity: str):
    """Over the NATS client port the QoS 1 delivery grant ($MQTT.sub.>) would let an
    identity read every client's deliveries: MQTT is the only way in."""
    with socket.create_connection(("127.0.0.1", cluster.nodes[0].client_port), timeout=5) as s:
        assert s.recv(4096).startswith(b"INFO ")
        hello = {"user": identity, "pass": cluster.password(identity), "verbose": False}
        s.sendall(f"CONNECT {json.dumps(hello)}\r\nPING\r\n".encode())
        answer = s.recv(4096)
    assert answer.startswith(b"-ERR 'Authorization Violation'"), answer


def test_the_config_holds_bcrypt_hashes_and_no_password(cluster: NatsCluster):
    text = (cluster.nodes[0].dir / "security.conf").read_text()
    identities = [*ROLES, *sorted(cluster.known)]  # other modules add and revoke agents too
    assert all(cluster.password(i) not in text for i in identities)
    hashes = [
        line.split('password: "', 1)[1][:4] for line in text.splitlines() if "password:" in line
    ]
    assert len(hashes) == len(identities) and set(hashes) == {"$2b$"}


def test_every_node_runs_the_same_security_conf(cluster: NatsCluster):
    texts = {(n.dir / "security.conf").read_text() for n in cluster.nodes}
    assert len(texts) == 1


# --- Agents ----------------------------------------------------------------------------------


def test_an_agent_cannot_publish_a_region_list(cluster: NatsCluster):
    assert delivered(cluster, "acme-01", REGION) == []
    assert retained(cluster, REGION) == [f"payload of {REGION}".encode()]


@pytest.mark.parametrize("topic", [PROFILE.format("acme-01"), CMD.format("acme-01")])
def test_an_agent_cannot_write_its_own_profile_or_commands(cluster: NatsCluster, topic: str):
    assert delivered_to_operator(cluster, "acme-01", topic) == []


@pytest.mark.parametrize("kind", ["status", "report", "profile", "cmd"])
def test_an_agent_cannot_write_under_another_agent(cluster: NatsCluster, kind: str):
    assert delivered_to_operator(cluster, "acme-01", f"clock/v1/agents/acme-02/{kind}") == []


@pytest.mark.parametrize("kind", ["status", "report"])
def test_an_agent_writes_its_own_status_and_report(cluster: NatsCluster, kind: str):
    topic = f"clock/v1/agents/acme-01/{kind}"
    assert delivered(cluster, "acme-01", topic) == [b"written by acme-01"]


def test_an_agent_reads_its_region_list_and_its_own_profile_only(cluster: NatsCluster):
    agent = login(cluster, "acme-02")
    operator = login(cluster, "operator")
    try:
        granted = agent.subscribe(
            REGION,
            "clock/v1/regions/+/servers",
            PROFILE.format("acme-02"),
            "clock/v1/agents/+/profile",
            PROFILE.format("acme-01"),
            CMD.format("acme-02"),
            qos=1,
        )
        assert codes(granted) == [GRANTED_QOS1, GRANTED_QOS1, GRANTED_QOS1, REFUSED, REFUSED, 1]
        operator.publish(CMD.format("acme-02"), b"sync")
        assert agent.wait(lambda: agent.on(CMD.format("acme-02")))
        assert agent.wait(lambda: len(agent.on(REGION)) == 2)  # two filters match it
        assert {m.payload for m in agent.on(REGION)} == {f"payload of {REGION}".encode()}
        assert agent.wait(lambda: agent.on(PROFILE.format("acme-02")))
        assert agent.on(PROFILE.format("acme-01")) == []
    finally:
        operator.close()
        agent.close()


@pytest.mark.parametrize("kind", ["status", "report", "cmd"])
def test_an_agent_cannot_read_another_agents_status_report_or_commands(
    cluster: NatsCluster, kind: str
):
    agent = login(cluster, "acme-02")
    try:
        granted = agent.subscribe(
            f"clock/v1/agents/acme-01/{kind}", f"clock/v1/agents/+/{kind}", qos=1
        )
        assert codes(granted) == [REFUSED, REFUSED]
    finally:
        agent.close()


@pytest.mark.parametrize("kind", ["status", "report"])
def test_an_agent_reads_back_its_own_retained_status_and_report(cluster: NatsCluster, kind: str):
    """How an agent that lost its state directory recovers its session counter."""
    topic = f"clock/v1/agents/acme-02/{kind}"
    writer = login(cluster, "acme-02")
    try:
        writer.publish(topic, f"my {kind}".encode(), retain=True)
    finally:
        writer.close()
    reader = login(cluster, "acme-02", node=2)
    try:
        assert codes(reader.subscribe(topic, qos=1)) == [GRANTED_QOS1]
        assert reader.wait(lambda: reader.on(topic))
        assert [m.payload for m in reader.on(topic)] == [f"my {kind}".encode()]
    finally:
        reader.close()


def test_an_agents_last_will_reaches_the_readers_of_its_status(cluster: NatsCluster):
    """The will is published with the agent's own rights: they must cover it."""
    watcher = login(cluster, "collector")
    try:
        watcher.subscribe(STATUS.format("acme-03"))
        agent = login(cluster, "acme-03", will=(STATUS.format("acme-03"), b"offline (will)"))
        agent.client.loop_stop()
        agent.client.socket().close()  # a crash: no DISCONNECT, so the will fires
        assert watcher.wait(lambda: b"offline (will)" in [m.payload for m in watcher.messages])
    finally:
        watcher.close()


def test_no_client_can_subscribe_to_the_qos1_delivery_subjects(cluster: NatsCluster):
    """Every identity holds $MQTT.sub.> (NATS delivers QoS 1 there, as the client itself);
    an MQTT client cannot name those subjects."""
    operator = login(cluster, "operator")
    try:
        assert codes(operator.subscribe("$MQTT/sub/#", "#", qos=0)) == [REFUSED, REFUSED]
    finally:
        operator.close()


# --- Publisher -------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["clock/v1/regions/eu-west/servers", PROFILE.format("acme-03")])
def test_the_publisher_writes_region_lists_and_profiles(cluster: NatsCluster, topic: str):
    assert delivered(cluster, "publisher", topic) == [b"written by publisher"]
    assert retained(cluster, topic) == [b"written by publisher"]


def test_the_publisher_reads_region_lists_profiles_and_reports(cluster: NatsCluster):
    """Lists and profiles: its version rule. Reports: a canary's verdict (docs/rollout.md)."""
    publisher = login(cluster, "publisher", node=1)
    agent = login(cluster, "acme-01", node=1)
    try:
        filters = ["clock/v1/regions/+/servers", "clock/v1/agents/+/profile"]
        granted = publisher.subscribe(*filters, "clock/v1/agents/+/report")
        assert codes(granted) == [0, 0, 0]
        agent.publish(REPORT.format("acme-01"), b"a report")
        assert publisher.wait(lambda: publisher.on(REPORT.format("acme-01")))
        assert publisher.wait(
            lambda: publisher.on(REGION) and publisher.on(PROFILE.format("acme-01"))
        )
    finally:
        agent.close()
        publisher.close()


@pytest.mark.parametrize("kind", ["status", "report"])
def test_the_publisher_cannot_write_an_agents_status_or_report(cluster: NatsCluster, kind: str):
    assert delivered(cluster, "publisher", f"clock/v1/agents/acme-01/{kind}") == []


@pytest.mark.parametrize("kind", ["status", "cmd"])
def test_the_publisher_cannot_read_statuses_or_commands(cluster: NatsCluster, kind: str):
    publisher = login(cluster, "publisher")
    try:
        assert codes(publisher.subscribe(f"clock/v1/agents/+/{kind}")) == [REFUSED]
    finally:
        publisher.close()


@pytest.mark.parametrize("role", ["publisher", "collector", "collector-2"])
def test_only_the_operator_sends_commands(cluster: NatsCluster, role: str):
    agent = login(cluster, "acme-01")
    sender = login(cluster, role)
    operator = login(cluster, "operator")
    try:
        agent.subscribe(CMD.format("acme-01"), qos=1)
        sender.publish(CMD.format("acme-01"), b"forged")
        operator.publish(CMD.format("acme-01"), b"real")
        assert agent.wait(lambda: agent.on(CMD.format("acme-01")))
        time.sleep(0.2)  # QoS 1 deliveries come through JetStream: give a forged one time
        assert [m.payload for m in agent.on(CMD.format("acme-01"))] == [b"real"]
    finally:
        operator.close()
        sender.close()
        agent.close()


# --- Collectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("node", [0, 1, 2])
@pytest.mark.parametrize("role", ["collector", "collector-2"])
def test_a_collector_cannot_write_a_region_list(cluster: NatsCluster, role: str, node: int):
    assert delivered_to_operator(cluster, role, REGION, node) == []
    assert retained(cluster, REGION, node=(node + 1) % 3) == [f"payload of {REGION}".encode()]


@pytest.mark.parametrize(
    "topic",
    [PROFILE.format("acme-01"), STATUS.format("acme-01"), REPORT.format("acme-01")],
)
@pytest.mark.parametrize("role", ["collector", "collector-2"])
def test_a_collector_writes_nothing(cluster: NatsCluster, role: str, topic: str):
    assert delivered_to_operator(cluster, role, topic) == []


@pytest.mark.parametrize("role", ["collector", "collector-2"])
def test_a_collector_reads_lists_profiles_statuses_and_reports_but_not_commands(
    cluster: NatsCluster, role: str
):
    collector = login(cluster, role)
    try:
        granted = collector.subscribe(
            "clock/v1/regions/+/servers",
            "clock/v1/agents/+/profile",
            "clock/v1/agents/+/status",
            "clock/v1/agents/+/report",
            "clock/v1/agents/+/cmd",
            qos=1,
        )
        assert codes(granted) == [1, 1, 1, 1, REFUSED]
    finally:
        collector.close()


# --- Operator --------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", [REGION, PROFILE.format("acme-01")])
def test_the_operator_cannot_write_lists_or_profiles(cluster: NatsCluster, topic: str):
    assert delivered(cluster, "operator", topic) == []


@pytest.mark.parametrize("kind", ["status", "report"])
def test_the_operator_cannot_write_an_agents_status_or_report(cluster: NatsCluster, kind: str):
    """Neither a forged one nor a clear: that is the `retire` identity's alone
    (tests/broker/test_retire_role.py)."""
    topic = f"clock/v1/agents/acme-30/{kind}"
    agent = login(cluster, "acme-30")
    try:
        agent.publish(topic, b"{}", retain=True)
    finally:
        agent.close()
    assert delivered(cluster, "operator", topic) == []
    operator = login(cluster, "operator")
    try:
        operator.publish(topic, b"", retain=True)
    finally:
        operator.close()
    assert retained(cluster, topic) == [b"{}"]


def test_the_operator_reads_everything_under_the_prefix(cluster: NatsCluster):
    operator = login(cluster, "operator", node=2)
    try:
        assert codes(operator.subscribe("clock/v1/#", qos=1)) == [GRANTED_QOS1]
        assert operator.wait(
            lambda: (
                {REGION, PROFILE.format("acme-01"), PROFILE.format("acme-02")} <= operator.topics()
            )
        )
    finally:
        operator.close()


def test_clockfleet_status_runs_as_the_operator(cluster: NatsCluster):
    status = {
        "schema": "clock.status/1", "agent": "acme-03", "state": "online", "software": "0.1.0",
        "region": "us-east", "session": 1, "since": codec.utcnow_iso(),
    }  # fmt: skip
    agent = login(cluster, "acme-03")
    try:
        agent.publish(STATUS.format("acme-03"), json.dumps(status).encode(), retain=True)
    finally:
        agent.close()
    done = subprocess.run(
        [sys.executable, "-m", "clockfleet", "status", "--json", *cluster.login("operator")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert "acme-03" in [r.get("agent") for r in rows], rows


def test_clockfleet_rollout_status_runs_as_the_operator(cluster: NatsCluster):
    command = [sys.executable, "-m", "clockfleet", "rollout", "status", "--json"]
    done = subprocess.run(
        [*command, *cluster.login("operator")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "regions" in json.loads(done.stdout)


# --- Roles named like agents -----------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["status", "report"])
def test_a_role_cannot_write_as_an_agent_named_like_it(cluster: NatsCluster, role: str, kind: str):
    watcher_role = "collector" if role != "collector" else "collector-2"
    topic = f"clock/v1/agents/{role}/{kind}"
    watcher = login(cluster, watcher_role)
    writer = login(cluster, role)
    witness = login(cluster, "acme-01")
    try:
        watcher.subscribe(f"clock/v1/agents/+/{kind}")
        writer.publish(topic, b"{}", retain=True)
        witness.publish(f"clock/v1/agents/acme-01/{kind}", b"{}")
        assert watcher.wait(lambda: watcher.on(f"clock/v1/agents/acme-01/{kind}"))
        assert watcher.on(topic) == []
    finally:
        witness.close()
        writer.close()
        watcher.close()
