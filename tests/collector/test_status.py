"""`clockfleet status` against a real Mosquitto's retained state."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker
from tests.collector.kit import (
    DEFAULT_QUEUE,
    Publisher,
    failed_report,
    now_iso,
    report,
    report_topic,
    servers,
    servers_topic,
    status,
    status_topic,
)

REPO = Path(__file__).resolve().parents[2]


def status_cli(broker: ShippedBroker | str, *args: str) -> subprocess.CompletedProcess:
    """`clockfleet status` as `operator` (as the README runs it); a string: a bare URL."""
    login = broker.login("operator") if isinstance(broker, ShippedBroker) else ["--broker", broker]
    return subprocess.run(
        [sys.executable, "-m", "clockfleet", "status", *login, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.fixture
def fleet(publisher) -> None:
    publisher.publish(servers_topic("us-east"), servers("us-east", 8))
    publisher.publish(servers_topic("eu-west"), servers("eu-west", 3))
    publisher.publish(report_topic("small"), report("small", offset_s=0.001, list_version=8))
    publisher.publish(report_topic("large"), report("large", offset_s=-0.9, list_version=7))
    publisher.publish(report_topic("failing"), failed_report("failing", list_version=8))
    publisher.publish(
        report_topic("west"),
        report("west", region="eu-west", offset_s=0.02, list_version=3, at=now_iso(-4 * 3600)),
    )
    publisher.publish(status_topic("small"), status("small", "online", 2))
    publisher.publish(status_topic("west"), status("west", "offline", 5, region="eu-west"))


def test_status_json_lists_every_agent_worst_offset_first(broker, fleet):
    r = status_cli(broker, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["agent"] for row in rows] == ["large", "west", "small", "failing"]
    by_agent = {row["agent"]: row for row in rows}
    assert by_agent["large"]["behind"] is True
    assert by_agent["large"]["published_version"] == 8
    assert by_agent["large"]["list_version"] == 7
    assert by_agent["small"]["behind"] is False
    assert by_agent["small"]["state"] == "online"
    assert by_agent["west"]["state"] == "offline"
    assert by_agent["west"]["stale"] is True  # 4 h > 2 x 3600 s
    assert by_agent["small"]["stale"] is False
    assert by_agent["failing"]["ok"] is False
    assert by_agent["failing"]["outcome"] == "failed: timeout, kod-deny"
    assert by_agent["small"]["server"] == "192.0.2.10:123"


def test_status_region_filter_shows_only_that_region(broker, fleet):
    rows = json.loads(status_cli(broker, "--json", "--region", "eu-west").stdout)
    assert [row["agent"] for row in rows] == ["west"]


def test_status_stale_after_overrides_the_poll_interval(broker, fleet):
    rows = json.loads(status_cli(broker, "--json", "--stale-after", "20000").stdout)
    west = next(row for row in rows if row["agent"] == "west")
    assert west["report_age_s"] > 4 * 3600 - 60
    assert west["stale"] is False  # 4 h < 20000 s


def test_status_prints_a_table_with_behind_and_stale_marks(broker, fleet):
    r = status_cli(broker)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for agent in ("large", "west", "small", "failing"):
        assert agent in out
    assert "8/7 behind" in out
    assert "stale" in out
    assert "offline" in out
    assert out.index("large") < out.index("small")


def test_status_exits_2_with_one_line_when_no_broker_answers():
    r = status_cli(f"mqtt://127.0.0.1:{devstack.free_port()}", "--json")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "no broker reachable" in r.stderr


def test_status_sees_more_retained_agents_than_a_qos1_subscriber_could(short_tmp):
    broker = devstack.start_shipped_mosquitto(short_tmp / "default-queue", **DEFAULT_QUEUE)
    try:
        pub = Publisher(broker)
        pub.publish_many((report_topic(f"a{i}"), report(f"a{i}")) for i in range(1500))
        pub.close()
        r = status_cli(broker, "--json")
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)) == 1500
    finally:
        broker.stop()
