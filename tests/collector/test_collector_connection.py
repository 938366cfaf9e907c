"""The collector's connection to a real Mosquitto: the whole retained snapshot (beyond the
QoS 1 cap), its fence, reconnecting after a broker restart and reading the retained state
again, and rotating past a dead node at start."""

from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest

from clockfleet import devstack
from clockfleet.collector import ingest
from clockfleet.collector.ingest import Collector
from clockfleet.protocol import session
from clockfleet.protocol.connection import parse_brokers
from tests.collector.kit import (
    DEFAULT_QUEUE,
    PREFIX,
    Publisher,
    report,
    report_topic,
    wait_until,
)

ACME_01 = {"agent": "acme-01", "region": "us-east"}


def test_a_restarted_collector_knows_every_retained_agent_beyond_the_qos1_cap(short_tmp):
    # Mosquitto with its default queue limits: a QoS 1 wildcard subscriber would get ~1020.
    broker = devstack.start_shipped_mosquitto(short_tmp / "default-queue", **DEFAULT_QUEUE)
    try:
        pub = Publisher(broker)
        n = 10_000  # beyond the QoS 1 cap, and a burst a slow reader would lose at QoS 0 too
        pub.publish_many(
            (report_topic(f"agent-{i:04d}"), report(f"agent-{i:04d}", offset_s=i * 1e-6))
            for i in range(n)
        )
        pub.close()
        collector = Collector(broker.settings("collector"))
        collector.start()
        try:
            wait_until(lambda: len(collector.state.agents) == n, what=f"{n} agents")
            assert collector.state.agents["agent-9999"].report.offset_s == pytest.approx(9999e-6)
        finally:
            collector.stop()
    finally:
        broker.stop()


def test_the_collector_reconnects_and_resubscribes_after_the_broker_restarts(
    broker, running_collector, publisher
):
    c = running_collector
    publisher.publish(report_topic("acme-01"), report("acme-01"))
    wait_until(lambda: "acme-01" in c.state.agents)
    publisher.close()
    broker.stop()
    wait_until(
        lambda: c.value("clockfleet_collector_broker_connected") == 0, what="disconnect seen"
    )
    # still serving the last known state while the broker is away
    assert c.value("clockfleet_agent_offset_seconds", **ACME_01) == 0.0012
    broker.restart()
    try:
        wait_until(lambda: c.value("clockfleet_collector_broker_connected") == 1, 40, "reconnect")
        assert c.value("clockfleet_collector_broker_reconnects_total") == 1
        again = Publisher(broker)
        again.publish(report_topic("acme-02"), report("acme-02"))
        again.close()
        wait_until(lambda: "acme-02" in c.state.agents, what="report after reconnect")
    finally:
        broker.stop()


def test_after_a_reconnection_the_collector_reads_the_retained_state_again(
    broker, running_collector, publisher, monkeypatch
):
    monkeypatch.setattr(ingest, "REREAD_AFTER_S", (1.0,))
    c = running_collector
    publisher.close()
    broker.stop()
    wait_until(lambda: c.value("clockfleet_collector_broker_connected") == 0, what="disconnect")
    broker.restart()
    try:
        wait_until(lambda: c.value("clockfleet_collector_broker_connected") == 1, 40, "reconnect")
        again = Publisher(broker)
        again.publish(report_topic("acme-02"), report("acme-02"))
        again.close()
        wait_until(lambda: "acme-02" in c.state.agents, what="the report, live")
        live = c.state.received["report"]
        # the broker sends the retained report once more when the collector reads again
        wait_until(lambda: c.state.received["report"] == live + 1, 10, "the report, again")
    finally:
        broker.stop()


def test_start_rotates_past_a_dead_broker_in_the_list(broker, publisher, monkeypatch):
    monkeypatch.setattr("clockfleet.protocol.connection.rotation", list)  # the dead one first
    dead = f"mqtt://127.0.0.1:{devstack.free_port()}"
    settings = broker.settings("collector")
    settings.brokers = parse_brokers(f"{dead},{broker.url}")
    collector = Collector(settings)
    collector.start()
    try:
        publisher.publish(report_topic("acme-01"), report("acme-01"))
        wait_until(lambda: "acme-01" in collector.state.agents)
        assert str(collector.current_broker) == broker.url
    finally:
        collector.stop()


def test_the_snapshot_fence_is_an_unsubscribe_of_the_sessions_fence_topic(
    broker, publisher, monkeypatch
):
    unsubscribed: list[str] = []
    real = mqtt.Client.unsubscribe

    def unsubscribe(self, topic, *args, **kwargs):
        unsubscribed.append(topic)
        return real(self, topic, *args, **kwargs)

    monkeypatch.setattr(mqtt.Client, "unsubscribe", unsubscribe)
    publisher.publish_many((report_topic(f"a{i}"), report(f"a{i}")) for i in range(200))
    collector = Collector(broker.settings("collector"))
    collector.start()
    try:
        wait_until(collector.retained_loaded.is_set, what="the fence answered")
        assert len(collector.state.agents) == 200  # the whole snapshot came before it
        assert unsubscribed == [session.fence_topic(PREFIX, collector.client_id)]
    finally:
        collector.stop()
