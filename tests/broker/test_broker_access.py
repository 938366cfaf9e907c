"""The production broker config: who may connect, and what each identity may read and write.

A publish the ACL denies is dropped silently under MQTT 3.1.1, and a denied read is simply
never delivered, so these tests assert what a second client receives (and, under MQTT 5,
the PUBACK's reason code).
"""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
import pytest

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ROLES, ShippedBroker
from tests.broker.mqttclient import ConnectRefused, MqttProbe, connect

REGION = "clock/v1/regions/us-east/servers"
PROFILE = "clock/v1/agents/{}/profile"
NOT_AUTHORISED = 135


def login(b: ShippedBroker, identity: str, **kwargs) -> MqttProbe:
    return connect(b.daemon.port, identity, b.password(identity), **kwargs)


def publish_fixtures(b: ShippedBroker) -> None:
    pub = login(b, "publisher")
    try:
        for topic in (REGION, PROFILE.format("acme-01"), PROFILE.format("acme-02")):
            assert (
                pub.publish(topic, f"payload of {topic}".encode(), retain=True).is_failure is False
            )
    finally:
        pub.close()


def test_anonymous_clients_are_refused(broker: ShippedBroker):
    with pytest.raises(ConnectRefused, match=r"Not authorized|Bad user"):
        connect(broker.daemon.port)


def test_a_wrong_password_is_refused(broker: ShippedBroker):
    with pytest.raises(ConnectRefused, match=r"Not authorized|Bad user"):
        connect(broker.daemon.port, "acme-01", "not-the-password")


def test_a_wrong_password_is_refused_under_mqtt_311(broker: ShippedBroker):
    with pytest.raises(ConnectRefused):
        connect(broker.daemon.port, "acme-01", "not-the-password", protocol=mqtt.MQTTv311)


def test_tls_listener_accepts_a_client_that_trusts_the_test_ca(broker: ShippedBroker):
    b = broker
    c = connect(
        b.tls_port,
        "acme-01",
        b.password("acme-01"),
        host="localhost",
        ca_file=str(b.certs / "ca.crt"),
    )
    try:
        assert c.subscribe(REGION)[0].value == 0
    finally:
        c.close()


def test_tls_listener_is_refused_by_a_client_without_the_test_ca(broker: ShippedBroker):
    b = broker
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(b.tls_port, "acme-01", b.password("acme-01"), host="localhost", tls=True)


def test_an_agent_cannot_publish_a_region_list(broker: ShippedBroker):
    b = broker
    watcher = login(b, "operator")
    agent = login(b, "acme-01")
    try:
        watcher.subscribe("clock/v1/#")
        assert agent.publish(REGION, b"forged list", retain=True).value == NOT_AUTHORISED
        watcher.sync("clock/v1/agents/acme-01/cmd")
        assert watcher.on(REGION) == []
    finally:
        agent.close()
        watcher.close()


def test_an_agent_cannot_write_under_another_agent(broker: ShippedBroker):
    b = broker
    agent = login(b, "acme-01")
    try:
        for kind in ("report", "status", "profile"):
            topic = f"clock/v1/agents/acme-02/{kind}"
            assert agent.publish(topic, b"{}").value == NOT_AUTHORISED, topic
        assert agent.publish(PROFILE.format("acme-01"), b"{}").value == NOT_AUTHORISED
    finally:
        agent.close()


def test_an_agent_writes_its_own_status_and_report(broker: ShippedBroker):
    b = broker
    collector = login(b, "collector")
    agent = login(b, "acme-01")
    try:
        collector.subscribe("clock/v1/agents/+/report", "clock/v1/agents/+/status")
        for kind in ("report", "status"):
            assert agent.publish(f"clock/v1/agents/acme-01/{kind}", b"{}").is_failure is False
        assert collector.wait(
            lambda: (
                {"clock/v1/agents/acme-01/report", "clock/v1/agents/acme-01/status"}
                <= collector.topics()
            )
        )
    finally:
        agent.close()
        collector.close()


def test_an_agent_reads_its_region_list_and_its_own_profile_only(broker: ShippedBroker):
    b = broker
    publish_fixtures(b)
    agent = login(b, "acme-02")
    operator = login(b, "operator")
    try:
        # A wildcard and a direct subscription to another agent's profile: neither delivers it.
        agent.subscribe(
            "clock/v1/regions/+/servers",
            "clock/v1/agents/+/profile",
            PROFILE.format("acme-01"),
            "clock/v1/agents/acme-02/cmd",
        )
        # Retained messages were queued at SUBSCRIBE time; a command sent after the SUBACK
        # arrives after all of them.
        assert operator.publish("clock/v1/agents/acme-02/cmd", b"sync").is_failure is False
        assert agent.wait(lambda: agent.on("clock/v1/agents/acme-02/cmd"))
        assert [m.payload for m in agent.on(REGION)] == [f"payload of {REGION}".encode()]
        assert len(agent.on(PROFILE.format("acme-02"))) == 1
        assert agent.on(PROFILE.format("acme-01")) == []
    finally:
        agent.close()
        operator.close()


def test_an_agent_cannot_read_another_agents_commands(broker: ShippedBroker):
    b = broker
    agent = login(b, "acme-02")
    operator = login(b, "operator")
    try:
        agent.subscribe("clock/v1/agents/+/cmd")
        operator.publish("clock/v1/agents/acme-01/cmd", b"for acme-01")
        operator.publish("clock/v1/agents/acme-02/cmd", b"for acme-02")
        assert agent.wait(lambda: agent.on("clock/v1/agents/acme-02/cmd"))
        assert agent.on("clock/v1/agents/acme-01/cmd") == []
    finally:
        agent.close()
        operator.close()


def test_the_collector_cannot_publish_lists(broker: ShippedBroker):
    b = broker
    collector = login(b, "collector")
    try:
        assert collector.publish(REGION, b"x", retain=True).value == NOT_AUTHORISED
    finally:
        collector.close()


def test_retained_lists_survive_a_broker_restart(broker: ShippedBroker):
    b = broker
    publish_fixtures(b)
    b.daemon.stop()
    b.daemon = devstack.restart(b.daemon)
    agent = login(b, "acme-01")
    try:
        agent.subscribe(REGION, "clock/v1/agents/acme-01/cmd")
        operator = login(b, "operator")
        try:
            operator.publish("clock/v1/agents/acme-01/cmd", b"sync")
        finally:
            operator.close()
        assert agent.wait(lambda: agent.on("clock/v1/agents/acme-01/cmd"))
        assert [m.payload for m in agent.on(REGION)] == [f"payload of {REGION}".encode()]
    finally:
        agent.close()


def test_a_packet_over_the_size_limit_is_refused(broker: ShippedBroker):
    """max_packet_size: a payload beyond the contract's 64 KiB never reaches a reader."""
    b = broker
    watcher = login(b, "operator")
    sender = login(b, "publisher", protocol=mqtt.MQTTv311)
    try:
        watcher.subscribe(REGION, "clock/v1/agents/acme-01/cmd")
        sender.client.publish(REGION, b"x" * 80_000, qos=1, retain=True)
        assert sender.wait(lambda: not sender.client.is_connected())  # the broker hung up
        watcher.sync("clock/v1/agents/acme-01/cmd")
        assert watcher.on(REGION) == []
    finally:
        sender.close()
        watcher.close()


# --- Roles get exactly their grants: the agents' `pattern` lines apply to every user ----------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["status", "report"])
def test_a_role_cannot_write_as_an_agent_named_like_it(broker: ShippedBroker, role: str, kind: str):
    """Without the role's deny line, the pattern would let it appear as an agent."""
    b = broker
    topic = f"clock/v1/agents/{role}/{kind}"
    watcher = login(b, "collector" if role != "collector" else "operator")
    writer = login(b, role)
    agent = login(b, "acme-01")
    try:
        watcher.subscribe(f"clock/v1/agents/+/{kind}")
        assert writer.publish(topic, b"{}", retain=True).value == NOT_AUTHORISED
        # A message from an agent sent after the refusal: whatever the role's publish
        # delivered would have arrived first.
        agent.publish(f"clock/v1/agents/acme-01/{kind}", b"{}")
        assert watcher.wait(lambda: watcher.on(f"clock/v1/agents/acme-01/{kind}"))
        assert watcher.on(topic) == []
    finally:
        agent.close()
        writer.close()
        watcher.close()


def test_the_publisher_cannot_read_commands_for_an_agent_named_like_it(
    broker: ShippedBroker,
):
    b = broker
    publisher = login(b, "publisher")
    operator = login(b, "operator")
    try:
        publisher.subscribe("clock/v1/agents/publisher/cmd", "clock/v1/regions/sync/servers")
        assert operator.publish("clock/v1/agents/publisher/cmd", b"sync").is_failure is False
        publisher.sync("clock/v1/regions/sync/servers")
        assert publisher.on("clock/v1/agents/publisher/cmd") == []
    finally:
        operator.close()
        publisher.close()


@pytest.mark.parametrize("kind", ["status", "report"])
def test_the_publisher_cannot_write_an_agents_status_or_report(broker: ShippedBroker, kind: str):
    b = broker
    publisher = login(b, "publisher")
    try:
        topic = f"clock/v1/agents/acme-01/{kind}"
        assert publisher.publish(topic, b"{}", retain=True).value == NOT_AUTHORISED
    finally:
        publisher.close()


@pytest.mark.parametrize("role", ["publisher", "collector"])
def test_only_the_operator_sends_commands(broker: ShippedBroker, role: str):
    b = broker
    agent = login(b, "acme-01")
    sender = login(b, role)
    operator = login(b, "operator")
    try:
        agent.subscribe("clock/v1/agents/acme-01/cmd")
        assert sender.publish("clock/v1/agents/acme-01/cmd", b"forged").value == NOT_AUTHORISED
        assert operator.publish("clock/v1/agents/acme-01/cmd", b"real").is_failure is False
        assert agent.wait(lambda: agent.on("clock/v1/agents/acme-01/cmd"))
        assert [m.payload for m in agent.on("clock/v1/agents/acme-01/cmd")] == [b"real"]
    finally:
        operator.close()
        sender.close()
        agent.close()


@pytest.mark.parametrize("topic", [REGION, PROFILE.format("acme-01")])
def test_the_operator_cannot_publish_lists_or_profiles(broker: ShippedBroker, topic: str):
    b = broker
    operator = login(b, "operator")
    try:
        assert operator.publish(topic, b"x", retain=True).value == NOT_AUTHORISED
    finally:
        operator.close()


@pytest.mark.parametrize("kind", ["status", "report"])
def test_the_operator_cannot_write_an_agents_status_or_report(broker: ShippedBroker, kind: str):
    """A thief of the operator's everyday secret must not forge a report or erase one: that
    is the `retire` identity's alone (tests/broker/test_retire_role.py)."""
    b = broker
    topic = f"clock/v1/agents/acme-01/{kind}"
    agent = login(b, "acme-01")
    operator = login(b, "operator")
    try:
        assert agent.publish(topic, b"{}", retain=True).is_failure is False
        for payload in (b'{"forged": true}', b""):  # a forgery, and a clear
            assert operator.publish(topic, payload, retain=True).value == NOT_AUTHORISED
        operator.subscribe(topic, "clock/v1/agents/acme-01/cmd")
        operator.sync("clock/v1/agents/acme-01/cmd")
        assert [m.payload for m in operator.on(topic)] == [b"{}"]  # the agent's, untouched
    finally:
        operator.close()
        agent.close()


@pytest.mark.parametrize("topic", [PROFILE.format("acme-01"), "clock/v1/agents/acme-01/report"])
def test_the_collector_cannot_write_profiles_or_reports(broker: ShippedBroker, topic: str):
    b = broker
    collector = login(b, "collector")
    try:
        assert collector.publish(topic, b"x", retain=True).value == NOT_AUTHORISED
    finally:
        collector.close()


@pytest.mark.parametrize("kind", ["status", "report"])
def test_an_agent_cannot_read_another_agents_status_or_report(broker: ShippedBroker, kind: str):
    b = broker
    reader = login(b, "acme-02")
    other = login(b, "acme-01")
    try:
        reader.subscribe(f"clock/v1/agents/+/{kind}")
        assert other.publish(f"clock/v1/agents/acme-01/{kind}", b"{}").is_failure is False
        # Its own, published afterwards, comes back: the other one would have come first.
        reader.sync(f"clock/v1/agents/acme-02/{kind}")
        assert reader.on(f"clock/v1/agents/acme-01/{kind}") == []
    finally:
        other.close()
        reader.close()
