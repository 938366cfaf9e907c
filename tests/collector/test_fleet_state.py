"""FleetState on its own: what each message does to the fleet, without MQTT."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from clockfleet.collector.fleet_state import Disposition, FleetState, is_behind
from tests.collector.kit import (
    PREFIX,
    failed_report,
    report,
    report_topic,
    servers,
    servers_topic,
    status,
    status_topic,
)


def put(state: FleetState, topic: str, body: dict | bytes):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return state.ingest(topic, payload, 1.0)


def test_a_topic_outside_the_contract_is_rejected_as_bad_topic():
    state = FleetState(PREFIX)
    for topic in (
        f"{PREFIX}/agents/a.b/report",
        f"{PREFIX}/agents/+/report",
        f"{PREFIX}/agents/acme-01/extra/report",
        "other/v1/agents/acme-01/report",
        f"{PREFIX}/agents/acme-01/profile",
    ):
        assert put(state, topic, report("acme-01")).reason == "bad-topic", topic
    assert state.rejected["bad-topic"] == 5
    assert not state.agents


def test_status_from_an_older_session_is_ignored_and_a_newer_one_applies():
    state = FleetState(PREFIX)
    put(state, status_topic("a"), status("a", "online", session=5))
    assert put(state, status_topic("a"), status("a", "offline", session=4)).outcome is (
        Disposition.IGNORED
    )
    assert state.agents["a"].status.state == "online"
    put(state, status_topic("a"), status("a", "offline", session=6))
    assert state.agents["a"].status.state == "offline"
    assert state.ignored["older-session"] == 1


def test_last_good_sync_survives_a_failed_report():
    state = FleetState(PREFIX)
    good = report("a", at="2026-11-25T02:00:00.000Z")
    put(state, report_topic("a"), good)
    put(state, report_topic("a"), failed_report("a", at="2026-11-25T03:00:00.000Z"))
    entry = state.agents["a"]
    assert entry.report.ok is False
    assert entry.last_ok_at == datetime(2026, 11, 25, 2, 0, tzinfo=UTC).timestamp()


def test_withdrawing_report_and_status_forgets_the_agent():
    state = FleetState(PREFIX)
    put(state, report_topic("a"), report("a"))
    put(state, status_topic("a"), status("a"))
    assert put(state, report_topic("a"), b"").outcome is Disposition.WITHDRAWN
    assert "a" in state.agents
    put(state, status_topic("a"), b"")
    assert "a" not in state.agents


def test_an_agent_is_behind_when_its_applied_version_is_older_than_the_published():
    state = FleetState(PREFIX)
    put(state, servers_topic("us-east"), servers("us-east", 8))
    put(state, report_topic("old"), report("old", list_version=7))
    put(state, report_topic("new"), report("new", list_version=8))
    assert is_behind(state.agents["old"], state.regions)
    assert not is_behind(state.agents["new"], state.regions)


def test_a_list_for_another_region_on_this_regions_topic_is_refused():
    state = FleetState(PREFIX)
    put(state, servers_topic("us-east"), servers("us-east", 8))
    r = put(state, servers_topic("us-east"), servers("eu-west", 9))
    assert r.reason == "id-mismatch"
    assert state.regions["us-east"].version == 8


def test_a_bad_status_is_rejected_and_the_last_good_status_kept():
    state = FleetState(PREFIX)
    put(state, status_topic("a"), status("a", "online", session=5))
    r = put(state, status_topic("a"), status("a", "sleeping", session=6))
    assert r.outcome is Disposition.REJECTED and r.reason == "invalid-field"
    assert state.agents["a"].status.session == 5


def test_failed_report_without_a_server_leaves_no_offset_but_counts_as_failing():
    state = FleetState(PREFIX)
    put(state, report_topic("a"), failed_report("a"))
    entry = state.agents["a"]
    assert entry.report.ok is False and entry.report.offset_s is None
    assert entry.last_ok_at is None


def test_an_old_copy_of_a_report_never_replaces_a_report_of_a_newer_list():
    # a broker whose retained store is behind replays it when the collector reads again
    state = FleetState(PREFIX)
    put(state, report_topic("a"), report("a", list_version=8))
    result = put(state, report_topic("a"), report("a", list_version=7))
    assert result.outcome is Disposition.IGNORED and result.reason == "older-list"
    assert state.agents["a"].report.list_version == 8
    assert state.ignored["older-list"] == 1


def test_a_report_from_another_region_applies_whatever_its_list_version():
    state = FleetState(PREFIX)
    put(state, report_topic("a"), report("a", list_version=8))
    put(state, report_topic("a"), report("a", region="eu-west", list_version=3))
    assert state.agents["a"].report.region == "eu-west"


def test_the_same_report_again_applies():
    state = FleetState(PREFIX)
    put(state, report_topic("a"), report("a", list_version=8))
    again = put(state, report_topic("a"), report("a", list_version=8))
    assert again.outcome is Disposition.APPLIED
