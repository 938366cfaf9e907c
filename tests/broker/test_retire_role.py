"""The `retire` identity: it may write (clear) any agent's status and report and read them
back, and nothing else, on the shipped Mosquitto and on the NATS cluster's generated
security.conf. The operator may not write them any more (test_broker_access.py,
test_nats_permissions.py); an agent may not be called `retire` (test_scripts.py), nor may the
role write as one (the role tests there).
"""

from __future__ import annotations

import pytest

from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.devstack.nats import NatsCluster
from tests.broker.mqttclient import MqttProbe, connect
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
    needs_nats,
    retained,
)
from tests.broker.natskit import login as nats_login

NOT_AUTHORISED = 135
AGENT = "acme-40"


def login(b: ShippedBroker, identity: str) -> MqttProbe:
    return connect(b.port, identity, b.password(identity))


# --- Mosquitto -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["status", "report"])
def test_retire_clears_an_agents_status_and_report_and_reads_them_back(
    broker: ShippedBroker, kind: str
):
    topic = f"clock/v1/agents/{AGENT}/{kind}"
    agent = login(broker, AGENT)
    try:
        assert agent.publish(topic, b"{}", retain=True).is_failure is False
    finally:
        agent.close()
    retire = login(broker, "retire")
    try:
        assert retire.publish(topic, b"", retain=True).is_failure is False
        # Read back as `clockfleet retire` does; the other kind of the agent's, written by
        # retire itself after the clear, is the sentinel.
        other = f"clock/v1/agents/{AGENT}/{'report' if kind == 'status' else 'status'}"
        assert retire.subscribe(topic, other)[0].is_failure is False
        retire.sync(other)
        assert retire.on(topic) == []
    finally:
        retire.close()


@pytest.mark.parametrize(
    "topic", [REGION, PROFILE.format(AGENT), CMD.format(AGENT)], ids=["list", "profile", "cmd"]
)
def test_retire_cannot_write_lists_profiles_or_commands(broker: ShippedBroker, topic: str):
    retire = login(broker, "retire")
    try:
        assert retire.publish(topic, b"", retain=True).value == NOT_AUTHORISED
        assert retire.publish(topic, b"{}", retain=True).value == NOT_AUTHORISED
    finally:
        retire.close()


def test_retire_reads_no_list_profile_or_command(broker: ShippedBroker):
    publisher = login(broker, "publisher")
    try:
        for topic in (REGION, PROFILE.format(AGENT)):
            assert publisher.publish(topic, b"{}", retain=True).is_failure is False
    finally:
        publisher.close()
    retire = login(broker, "retire")
    operator = login(broker, "operator")
    try:
        retire.subscribe("clock/v1/regions/+/servers", "clock/v1/agents/+/profile")
        retire.subscribe(CMD.format(AGENT), STATUS.format(AGENT))
        assert operator.publish(CMD.format(AGENT), b"sync").is_failure is False
        # Its own write to the agent's status comes back after everything queued before it.
        retire.sync(STATUS.format(AGENT))
        assert retire.topics() == {STATUS.format(AGENT)}
    finally:
        operator.close()
        retire.close()


# --- NATS ------------------------------------------------------------------------------------


@needs_nats
@pytest.mark.parametrize("kind", ["status", "report"])
def test_retire_clears_an_agents_status_and_report_on_nats(cluster: NatsCluster, kind: str):
    topic = f"clock/v1/agents/acme-41/{kind}"
    agent = nats_login(cluster, "acme-41")
    try:
        agent.publish(topic, b"{}", retain=True)
    finally:
        agent.close()
    assert retained(cluster, topic) == [b"{}"]
    retire = nats_login(cluster, "retire")
    try:
        retire.publish(topic, b"", retain=True)
    finally:
        retire.close()
    assert retained(cluster, topic) == []


@needs_nats
@pytest.mark.parametrize("kind", [STATUS, REPORT], ids=["status", "report"])
def test_retire_writes_an_agents_status_and_report_on_nats(cluster: NatsCluster, kind: str):
    assert delivered(cluster, "retire", kind.format("acme-42")) == [b"written by retire"]


@needs_nats
@pytest.mark.parametrize(
    "topic",
    [REGION, PROFILE.format("acme-42"), CMD.format("acme-42")],
    ids=["list", "profile", "cmd"],
)
def test_retire_cannot_write_lists_profiles_or_commands_on_nats(cluster: NatsCluster, topic: str):
    assert delivered_to_operator(cluster, "retire", topic) == []


@needs_nats
def test_retire_reads_statuses_and_reports_only_on_nats(cluster: NatsCluster):
    retire = nats_login(cluster, "retire")
    try:
        granted = retire.subscribe(
            STATUS.format("acme-42"),
            REPORT.format("acme-42"),
            "clock/v1/regions/+/servers",
            "clock/v1/agents/+/profile",
            CMD.format("acme-42"),
            qos=1,
        )
        assert codes(granted) == [GRANTED_QOS1, GRANTED_QOS1, REFUSED, REFUSED, REFUSED]
    finally:
        retire.close()
