"""`clockfleet collector --region`: collectors that each serve some regions split a fleet
between them. The region is read from the payload (report topics name none): cheaply where
it can be, by a JSON parse where it cannot, and an agent belongs where its latest report says."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest

from clockfleet import devstack
from clockfleet.collector.cli import main as collector_main
from clockfleet.collector.fleet_state import FleetState
from clockfleet.collector.ingest import Collector
from clockfleet.collector.region_shard import UNPLACED, RegionShard, claimed_region
from clockfleet.devstack.mosquitto import ShippedBroker
from tests.collector.kit import (
    Publisher,
    report,
    report_topic,
    servers,
    servers_topic,
    status,
    status_topic,
)
from tests.helpers import wait_until

PREFIX = "clock/v1"
FLEET = {  # agent -> region
    "acme-01": "us-east",
    "acme-02": "us-east",
    "globex-01": "eu-west",
    "globex-02": "eu-west",
    "initech-01": "ap-south",
}


def payload(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (payload(report("a", region="eu-west")), "eu-west"),
        (b'{"schema":"clock.report/1", "region" : "eu-west", "agent":"a"}', "eu-west"),
        (b'{"agent":"a","\\u0072egion":"eu-west"}', "eu-west"),  # escaped key: parsed
        (b'{"x":{"region":"us-east"},"region":"eu-west"}', "eu-west"),  # two: parsed
        (b'{"agent":"a","region":"eu\\u002dwest"}', "eu-west"),  # escaped value: parsed
        (b'{"note":"\\"region\\":\\"us-east\\"","region":"eu-west"}', "eu-west"),
        (payload(status("a", region=None)), UNPLACED),
        (b'{"region":null}', UNPLACED),
        # Not JSON: the collector serving eu-west decodes it strictly and says why.
        (b'{"region":"eu-west"', "eu-west"),
        (b'{"region":eu-west}', UNPLACED),  # every collector hands it to strict decoding
        (b"[" * 100_000, UNPLACED),
    ],
)
def test_the_region_is_read_from_the_payload(raw: bytes, expected: object):
    assert claimed_region(raw) == expected


def test_an_agent_belongs_where_its_latest_report_says():
    state = FleetState(PREFIX)
    shard = RegionShard({"us-east"}, PREFIX, state)

    def offer(agent: str, kind: str, body: dict) -> bool:
        raw_topic = f"{PREFIX}/agents/{agent}/{kind}"
        ok = shard.admit(raw_topic.encode(), payload(body))
        if ok:
            state.ingest(raw_topic, payload(body))
        return ok

    # Its status still names the old region; its report says it moved here.
    assert not offer("acme-01", "status", status("acme-01", region="eu-west"))
    assert offer("acme-01", "report", report("acme-01", region="us-east"))
    assert shard.status_requests() == ["acme-01"]  # its status is read again
    assert offer("acme-01", "status", status("acme-01", region="eu-west"))
    # It moves away: dropped at once, and its statuses skipped from then on.
    assert not offer("acme-01", "report", report("acme-01", region="eu-west"))
    assert "acme-01" not in state.agents
    assert not offer("acme-01", "status", status("acme-01", region=None))
    # A status naming no region, of an agent not yet placed, is kept.
    assert offer("acme-02", "status", status("acme-02", region=None))
    assert state.dropped["other-region"] == 3
    # Withdrawals always pass.
    assert shard.admit(f"{PREFIX}/agents/acme-01/report".encode(), b"")


@pytest.fixture
def fleet_on_broker(broker: ShippedBroker) -> Publisher:
    publisher = Publisher(broker)
    items: list = []
    for agent, region in FLEET.items():
        items.append((report_topic(agent), report(agent, region=region, list_version=3)))
        items.append((status_topic(agent), status(agent, region=region)))
    for region in sorted(set(FLEET.values())):
        items.append((servers_topic(region), servers(region, 3)))
    publisher.publish_many(items)
    return publisher


@pytest.fixture
def two_collectors(broker: ShippedBroker, fleet_on_broker) -> Iterator[tuple[Collector, Collector]]:
    us = Collector(broker.settings("collector"), regions={"us-east"}).start()
    rest = Collector(broker.settings("collector-2"), regions={"eu-west", "ap-south"}).start()
    try:
        for c in (us, rest):
            wait_until(c.retained_loaded.is_set, what="the retained snapshot")
        yield us, rest
    finally:
        us.stop()
        rest.stop()


def by_region(c: Collector) -> dict[str, str]:
    return {a: e.region() for a, e in c.state.agents.items()}


def test_two_collectors_split_the_fleet_by_region(two_collectors):
    us, rest = two_collectors
    assert by_region(us) == {a: r for a, r in FLEET.items() if r == "us-east"}
    assert by_region(rest) == {a: r for a, r in FLEET.items() if r != "us-east"}
    assert set(us.state.regions) == {"us-east"}  # lists subscribed by topic
    assert set(rest.state.regions) == {"eu-west", "ap-south"}
    assert all(e.status is not None for c in (us, rest) for e in c.state.agents.values())
    # Each skipped the other's reports and statuses, before decoding.
    assert us.state.dropped["other-region"] == 2 * 3
    assert rest.state.dropped["other-region"] == 2 * 2


def test_an_agent_moving_region_moves_between_collectors_with_its_status(
    two_collectors, fleet_on_broker: Publisher
):
    us, rest = two_collectors
    # The new profile made it report from eu-west; its retained status still says us-east.
    fleet_on_broker.publish(report_topic("acme-01"), report("acme-01", region="eu-west"))
    wait_until(lambda: "acme-01" in rest.state.agents, what="eu-west's collector has it")
    wait_until(lambda: "acme-01" not in us.state.agents, what="us-east's dropped it")
    wait_until(
        lambda: rest.state.agents["acme-01"].status is not None, what="its status read again"
    )
    assert rest.state.agents["acme-01"].region() == "eu-west"


def test_collector_cli_with_region_serves_only_that_regions_agents(broker, fleet_on_broker):
    port = devstack.free_port()
    argv = [sys.executable, "-m", "clockfleet", "collector", *broker.login("collector")]
    proc = subprocess.Popen(
        [*argv, "--listen", f"127.0.0.1:{port}", "--region", "eu-west"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    text = ""

    def scraped() -> bool:
        nonlocal text
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return False
        return 'agent="globex-02"' in text

    try:
        wait_until(scraped, what="the CLI's /metrics")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert 'agent="acme-01"' not in text and 'agent="initech-01"' not in text
    assert 'clockfleet_collector_messages_dropped_total{reason="other-region"}' in text
    assert b"for regions eu-west" in err


def test_collector_cli_refuses_a_region_id_with_a_dot(capsys):
    assert collector_main(["--region", "us.east", "--broker", "mqtt://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--region 'us.east'" in err[0]


def test_paho_delivered_messages_are_filtered_too():
    """What paho hands over itself (anything but a QoS 0 PUBLISH, e.g. under MQTT 5) goes
    through the same decision as the socket reader's fast path."""
    import paho.mqtt.client as mqtt

    state = FleetState(PREFIX)
    passed: list[bytes] = []
    on_message = RegionShard({"us-east"}, PREFIX, state).message(
        lambda client, userdata, msg: passed.append(msg.topic.encode())
    )
    for agent, region in (("acme-01", "us-east"), ("globex-01", "eu-west")):
        msg = mqtt.MQTTMessage(topic=f"{PREFIX}/agents/{agent}/report".encode())
        msg.payload = payload(report(agent, region=region))
        on_message(None, None, msg)  # type: ignore[arg-type]
    assert passed == [f"{PREFIX}/agents/acme-01/report".encode()]
    assert state.dropped["other-region"] == 1
