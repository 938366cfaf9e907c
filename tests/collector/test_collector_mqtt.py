"""The collector against a real Mosquitto: what reports, status and lists published in the
contract's format become on /metrics, and what a bad message does not do."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clockfleet.collector.ingest import Collector
from clockfleet.protocol.messages import Report
from tests.collector.kit import (
    PREFIX,
    failed_report,
    now_iso,
    reference_exposition,
    report,
    report_topic,
    servers,
    servers_topic,
    status,
    status_topic,
    wait_until,
)


def agent_labels(agent: str, region: str = "us-east") -> dict[str, str]:
    return {"agent": agent, "region": region}


def test_reports_status_and_lists_become_series_with_values_and_labels(
    running_collector, publisher
):
    at = now_iso()
    publisher.publish(servers_topic("us-east"), servers("us-east", 8))
    publisher.publish(report_topic("acme-01"), report("acme-01", offset_s=-0.25, at=at))
    publisher.publish(status_topic("acme-01"), status("acme-01", "online", session=3))
    publisher.publish(report_topic("acme-02"), failed_report("acme-02", list_version=8))
    c = running_collector
    wait_until(lambda: len(c.state.agents) == 2 and c.state.regions, what="all messages")

    s = c.samples()
    a1 = frozenset(agent_labels("acme-01").items())
    a2 = frozenset(agent_labels("acme-02").items())
    at_ts = datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()
    assert s[("clockfleet_agent_offset_seconds", a1)] == -0.25
    assert s[("clockfleet_agent_delay_seconds", a1)] == 0.0004
    assert s[("clockfleet_agent_root_distance_seconds", a1)] == 0.003
    assert s[("clockfleet_agent_stratum", a1)] == 2
    assert s[("clockfleet_agent_last_report_ok", a1)] == 1
    assert s[("clockfleet_agent_online", a1)] == 1
    assert s[("clockfleet_agent_list_version", a1)] == 7
    assert s[("clockfleet_agent_last_report_timestamp_seconds", a1)] == pytest.approx(at_ts)
    assert s[("clockfleet_agent_last_sync_success_timestamp_seconds", a1)] == pytest.approx(at_ts)
    info = {
        "agent": "acme-01",
        "region": "us-east",
        "server": "192.0.2.10:123",
        "timezone": "America/Chicago",
        "software": "0.1.0",
        "discipline": "observe",
        "cohort": "",  # no canary in its region
    }
    assert s[("clockfleet_agent_info", frozenset(info.items()))] == 1
    # A failed report: no offset, no good sync, but a report time, ok 0 and its version.
    assert ("clockfleet_agent_offset_seconds", a2) not in s
    assert ("clockfleet_agent_last_sync_success_timestamp_seconds", a2) not in s
    assert s[("clockfleet_agent_last_report_ok", a2)] == 0
    assert s[("clockfleet_agent_list_version", a2)] == 8
    region = frozenset({"region": "us-east"}.items())
    assert s[("clockfleet_region_list_version", region)] == 8
    assert s[("clockfleet_region_agents", region)] == 2
    assert s[("clockfleet_region_agents_behind", region)] == 1  # acme-01 applied 7 < 8
    assert s[("clockfleet_region_agents_failing", region)] == 1
    assert s[("clockfleet_collector_messages_received_total", frozenset({("kind", "report")}))] == 2
    assert s[("clockfleet_collector_broker_connected", frozenset())] == 1
    assert s[("clockfleet_collector_broker_reconnects_total", frozenset())] == 0


def test_the_report_hook_gets_agent_decoded_report_and_monotonic_receive_time(broker, publisher):
    seen: list[tuple[str, Report, float]] = []
    collector = Collector(
        broker.settings("collector"),
        on_report=lambda agent, rep, t: seen.append((agent, rep, t)),
    )
    before = time.monotonic()
    collector.start()
    try:
        publisher.publish(report_topic("acme-01"), report("acme-01", offset_s=0.25))
        publisher.publish(report_topic("acme-02"), b"not json")
        wait_until(lambda: collector.state.rejected["malformed-json"] == 1)
    finally:
        collector.stop()
    assert [(agent, rep.offset_s) for agent, rep, _ in seen] == [("acme-01", 0.25)]
    assert before <= seen[0][2] <= time.monotonic()


def test_a_newer_report_replaces_the_values_of_the_older(running_collector, publisher):
    publisher.publish(report_topic("acme-01"), report("acme-01", offset_s=0.1))
    c = running_collector
    wait_until(lambda: c.value("clockfleet_agent_offset_seconds", **agent_labels("acme-01")))
    publisher.publish(report_topic("acme-01"), report("acme-01", offset_s=-0.2))
    wait_until(
        lambda: c.value("clockfleet_agent_offset_seconds", **agent_labels("acme-01")) == -0.2,
        what="new offset",
    )


def _with_offset_literal(literal: str) -> str:
    return json.dumps(report("acme-01", offset_s=0.424242)).replace("0.424242", literal)


# (case, reason it is counted under, payload on acme-01's report topic)
BAD_REPORTS = [
    ("malformed-json", "malformed-json", b'{"schema": "clock.report/1", '),
    ("wrong-schema", "wrong-schema", {**report("acme-01"), "schema": "clock.servers/1"}),
    ("string-version", "invalid-field", {**report("acme-01"), "list_version": "7"}),
    ("payload-id-differs", "id-mismatch", report("acme-99")),
    ("nan-offset", "not-a-number", _with_offset_literal("NaN")),
    ("infinite-offset", "not-a-number", _with_offset_literal("Infinity")),
    ("offset-1e308", "invalid-field", _with_offset_literal("1e308")),
    ("at-two-days-ahead", "future-timestamp", report("acme-01", at=now_iso(2 * 86400))),
    # over the contract's 64 KiB, under the shipped broker's max_packet_size (70000)
    ("oversized", "oversized", json.dumps({**report("acme-01"), "pad": "x" * 66_000})),
    ("duplicate-key", "duplicate-key", json.dumps(report("acme-01"))[:-1] + ', "stratum": 1}'),
]


@pytest.mark.parametrize(
    ("reason", "payload"), [c[1:] for c in BAD_REPORTS], ids=[c[0] for c in BAD_REPORTS]
)
def test_a_bad_report_is_counted_under_its_reason_and_keeps_the_last_good_values(
    running_collector, publisher, reason, payload
):
    c = running_collector
    agent = "acme-01"
    publisher.publish(report_topic(agent), report(agent, offset_s=0.0123))
    wait_until(lambda: c.value("clockfleet_agent_offset_seconds", **agent_labels(agent)))
    publisher.publish(report_topic(agent), payload)
    wait_until(
        lambda: c.value("clockfleet_collector_messages_rejected_total", reason=reason) == 1,
        what=f"rejection counted under {reason}",
    )
    assert c.value("clockfleet_agent_offset_seconds", **agent_labels(agent)) == 0.0123
    # still serving, still ingesting: a good report afterwards is applied
    publisher.publish(report_topic(agent), report(agent, offset_s=0.0456))
    wait_until(lambda: c.value("clockfleet_agent_offset_seconds", **agent_labels(agent)) == 0.0456)


def test_a_message_on_a_topic_with_a_dot_in_the_id_is_counted_as_bad_topic(
    running_collector, publisher
):
    # No agent identity can hold a dot (broker/clockfleet-identities refuses it), but the
    # ACL's `regions/+/servers` lets the publisher identity write a region id with one.
    c = running_collector
    publisher.publish(f"{PREFIX}/regions/a.b/servers", servers("a.b", 3))
    publisher.publish(report_topic("acme-01"), report("acme-01"))  # delivered after the bad one
    wait_until(lambda: "acme-01" in c.state.agents)
    assert c.value("clockfleet_collector_messages_rejected_total", reason="bad-topic") == 1
    assert set(c.state.agents) == {"acme-01"}


def test_withdrawn_topics_drop_their_series(running_collector, publisher):
    c = running_collector
    publisher.publish(servers_topic("eu-west"), servers("eu-west", 3))
    publisher.publish(report_topic("acme-01"), report("acme-01"))
    publisher.publish(status_topic("acme-01"), status("acme-01"))
    wait_until(lambda: c.value("clockfleet_agent_online", **agent_labels("acme-01")) == 1)
    assert c.value("clockfleet_region_list_version", region="eu-west") == 3

    publisher.publish(report_topic("acme-01"), b"")
    wait_until(
        lambda: c.value("clockfleet_agent_offset_seconds", **agent_labels("acme-01")) is None
    )
    assert c.value("clockfleet_agent_online", **agent_labels("acme-01")) == 1
    publisher.publish(status_topic("acme-01"), b"")
    publisher.publish(servers_topic("eu-west"), b"")
    wait_until(lambda: not c.state.agents and not c.state.regions, what="all withdrawn")
    names = {name for name, _ in c.samples()}
    assert "clockfleet_agent_online" not in names
    assert "clockfleet_region_list_version" not in names


def test_an_offline_will_from_an_older_session_is_ignored(running_collector, publisher):
    c = running_collector
    publisher.publish(status_topic("acme-01"), status("acme-01", "online", session=13))
    wait_until(lambda: c.value("clockfleet_agent_online", **agent_labels("acme-01")) == 1)
    # the will of session 12 fires on session takeover, after session 13 said online
    publisher.publish(status_topic("acme-01"), status("acme-01", "offline", session=12))
    wait_until(
        lambda: c.value("clockfleet_collector_messages_ignored_total", reason="older-session") == 1
    )
    assert c.value("clockfleet_agent_online", **agent_labels("acme-01")) == 1
    # the same session's own will does count
    publisher.publish(status_topic("acme-01"), status("acme-01", "offline", session=13))
    wait_until(lambda: c.value("clockfleet_agent_online", **agent_labels("acme-01")) == 0)


def test_metrics_match_prometheus_clients_own_exposition_first_and_from_the_cache(
    running_collector, publisher
):
    publisher.publish(servers_topic("us-east"), servers("us-east", 8))
    publisher.publish(report_topic("acme-01"), report("acme-01", software='odd "v\\1"\nx'))
    publisher.publish(report_topic("acme-02"), failed_report("acme-02"))
    publisher.publish(status_topic("acme-03"), status("acme-03", region="eu-west"))
    c = running_collector
    wait_until(lambda: len(c.state.agents) == 3 and c.state.regions)

    def parsed(text: str) -> set:
        return {
            (s.name, frozenset(s.labels.items()), s.value)
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if not s.name.endswith("_created")
        }

    theirs = parsed(reference_exposition(c.collector.state, c.collector.link()))
    first = parsed(c.renderer.render().decode())
    cached = parsed(c.renderer.render().decode())  # every agent's lines from the cache now
    assert first == theirs
    assert cached == theirs
    assert len(theirs) > 20


def test_a_flood_of_bad_messages_is_counted_in_full_but_logged_once(
    running_collector, publisher, caplog
):
    c = running_collector
    caplog.set_level(logging.WARNING, logger="clockfleet.collector")
    publisher.publish_many((report_topic(f"bad-{i}"), b"{oops") for i in range(50))
    wait_until(
        lambda: (
            c.value("clockfleet_collector_messages_rejected_total", reason="malformed-json") == 50
        )
    )
    lines = [r for r in caplog.records if "malformed-json" in r.getMessage()]
    assert len(lines) == 1
