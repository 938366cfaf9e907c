"""The collector through the production broker config: TLS listener, its own identity, ACL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.collector.ingest import Collector
from clockfleet.devstack.mosquitto import ShippedBroker, start_shipped
from clockfleet.protocol.connection import BrokerUnreachable, ConnectionSettings, parse_brokers
from tests.collector.kit import report, report_topic, wait_until


@pytest.fixture
def tls_broker(short_tmp: Path) -> Iterator[ShippedBroker]:
    b = start_shipped(short_tmp, ["acme-01"])
    yield b
    b.daemon.stop()


def publish_as_agent(b: ShippedBroker, agent: str, body: dict) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.username_pw_set(agent, b.password(agent))
    client.connect(b.daemon.host, b.daemon.port)
    client.loop_start()
    try:
        client.publish(report_topic(agent), json.dumps(body), qos=1, retain=True).wait_for_publish(
            10
        )
    finally:
        client.disconnect()
        client.loop_stop()


def test_collector_reads_retained_and_live_reports_over_tls_as_its_own_identity(tls_broker):
    b = tls_broker
    publish_as_agent(b, "acme-01", report("acme-01", offset_s=0.011))
    settings = ConnectionSettings(
        parse_brokers(b.tls_url),
        username="collector",
        password=b.password("collector"),
        ca_file=str(b.certs / "ca.crt"),
    )
    collector = Collector(settings).start()
    try:
        wait_until(lambda: "acme-01" in collector.state.agents, what="retained report")
        assert collector.state.agents["acme-01"].report.offset_s == 0.011
        publish_as_agent(b, "acme-01", report("acme-01", offset_s=-0.022))
        wait_until(
            lambda: collector.state.agents["acme-01"].report.offset_s == -0.022,
            what="live report over TLS",
        )
        assert collector.connected
    finally:
        collector.stop()


def test_a_refused_connection_is_named_by_its_reason_code(tls_broker):
    b = tls_broker
    settings = ConnectionSettings(
        parse_brokers(b.tls_url),
        username="collector",
        password="not-the-password",
        ca_file=str(b.certs / "ca.crt"),
    )
    with pytest.raises(BrokerUnreachable) as refused:
        Collector(settings).start()
    assert str(refused.value) == f"{b.tls_url}: refused: not-authorised"
