"""What the NATS test modules share: one 3-node cluster started as shipped (identities from
broker/clockfleet-identities, security.conf from broker/nats/make-security-conf), its logins,
and how they tell a refused publish from a delivered one.

NATS speaks MQTT 3.1.1 only, where a denied publish is still PUBACKed with code 0 and a
denied SUBSCRIBE gets SUBACK 0x80, so the tests assert what a second client receives and what
each SUBACK grants. Writer, witness and watcher share a node unless the test is about another
node: one node hands a client's messages on in the order it took them, so whatever a denied
publish delivered would have arrived before the witness's message that comes after it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from clockfleet.devstack.nats import NatsCluster, start_cluster
from tests.broker.mqttclient import MqttProbe, connect

needs_nats = pytest.mark.skipif(
    shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists(),
    reason="nats-server not installed (apt-get install nats-server)",
)

AGENTS = ("acme-01", "acme-02", "acme-03")
REGION = "clock/v1/regions/us-east/servers"
PROFILE = "clock/v1/agents/{}/profile"
STATUS = "clock/v1/agents/{}/status"
REPORT = "clock/v1/agents/{}/report"
CMD = "clock/v1/agents/{}/cmd"
GRANTED_QOS1 = 1
REFUSED = 0x80


def login(c: NatsCluster, identity: str, node: int = 0, **kwargs) -> MqttProbe:
    return connect(
        c.nodes[node].mqtt_port, identity, c.password(identity), protocol=mqtt.MQTTv311, **kwargs
    )


def publish_fixtures(c: NatsCluster) -> None:
    pub = login(c, "publisher")
    try:
        for topic in (REGION, PROFILE.format("acme-01"), PROFILE.format("acme-02")):
            pub.publish(topic, f"payload of {topic}".encode(), retain=True)
    finally:
        pub.close()


def codes(suback: list) -> list[int]:
    return [c.value for c in suback]


def retained(c: NatsCluster, topic: str, node: int = 1) -> list[bytes]:
    """What a fresh reader (the operator) gets retained on `topic`, from another node."""
    reader = login(c, "operator", node)
    try:
        reader.subscribe(topic, CMD.format("acme-03"))
        reader.sync(CMD.format("acme-03"))
        return [m.payload for m in reader.on(topic) if m.retain]
    finally:
        reader.close()


DELIVERY_GRACE_S = 1.0


def delivered(c: NatsCluster, writer: str, topic: str, *, node: int = 0) -> list[bytes]:
    """`writer` publishes to `topic` (retained); what a reader of that topic received by the
    time a later message of an agent arrived (nothing, when the publish was denied; what
    was retained before comes flagged so and is left out)."""
    watcher = login(c, "collector" if writer != "collector" else "collector-2", node)
    sender = login(c, writer, node)
    witness = login(c, "acme-03", node)
    try:
        assert REFUSED not in codes(watcher.subscribe(topic, STATUS.format("acme-03")))
        sender.publish(topic, f"written by {writer}".encode(), retain=True)
        witness.publish(STATUS.format("acme-03"), b"witness")
        assert watcher.wait(lambda: watcher.on(STATUS.format("acme-03"))), "no witness"
        # Two publishers' messages may reach a reader in either order on NATS (a retained
        # one goes through JetStream first): a delivery may trail the witness a little.
        watcher.wait(lambda: any(not m.retain for m in watcher.on(topic)), DELIVERY_GRACE_S)
        return [m.payload for m in watcher.on(topic) if not m.retain]
    finally:
        witness.close()
        sender.close()
        watcher.close()


def delivered_to_operator(c: NatsCluster, writer: str, topic: str, node: int = 0) -> list[bytes]:
    """As delivered(), read by the operator (who alone reads commands): its own command to
    acme-03, sent after the writer's PUBACK, is the witness."""
    watcher = login(c, "operator", node)
    sender = login(c, writer, node)
    try:
        assert REFUSED not in codes(watcher.subscribe(topic, CMD.format("acme-03")))
        sender.publish(topic, f"written by {writer}".encode(), retain=True)
        watcher.sync(CMD.format("acme-03"))
        watcher.wait(lambda: any(not m.retain for m in watcher.on(topic)), DELIVERY_GRACE_S)
        return [m.payload for m in watcher.on(topic) if not m.retain]
    finally:
        sender.close()
        watcher.close()


def started_cluster() -> Iterator[NatsCluster]:
    """The cluster every NATS module of tests/broker shares (conftest.py: one per run)."""
    rundir = Path(tempfile.mkdtemp(prefix="cf-natsperm-", dir="/tmp"))
    c = start_cluster(rundir / "cluster", agents=list(AGENTS))
    try:
        publish_fixtures(c)
        yield c
    finally:
        c.stop()
        shutil.rmtree(rundir, ignore_errors=True)
