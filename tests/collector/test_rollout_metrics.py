"""A region's canary rollout as the collector exports it, from real retained messages on a
real Mosquitto: phase, cohort reports, bake time left or overdue, how it ended."""

from __future__ import annotations

import pytest

from tests.collector.kit import (
    canary,
    cohort_report,
    ended,
    now_iso,
    report,
    report_topic,
    servers,
    servers_topic,
)
from tests.helpers import wait_until

CHANGE = "c9-1f2e3d4c"
PHASES = ("none", "canary", "baking", "promoted", "aborted")


def phases(c, region: str) -> dict[str, float | None]:
    return {p: c.value("clockfleet_rollout_phase", region=region, phase=p) for p in PHASES}


def settled(c, region: str, phase: str) -> None:
    wait_until(
        lambda: c.value("clockfleet_rollout_phase", region=region, phase=phase) == 1,
        what=f"{region} in phase {phase}",
    )


@pytest.fixture
def canary_region(publisher, running_collector):
    """us-east with a 100 % canary (v9): one cohort agent ok, one failing, one still on v8."""
    publisher.publish(servers_topic("us-east"), servers("us-east", 9, canary=canary(CHANGE)))
    publisher.publish(report_topic("a-ok"), cohort_report("a-ok", "us-east", 9, CHANGE))
    publisher.publish(
        report_topic("a-fail"), cohort_report("a-fail", "us-east", 9, CHANGE, ok=False)
    )
    publisher.publish(report_topic("a-old"), report("a-old", list_version=8))
    wait_until(lambda: len(running_collector.state.agents) == 3, what="three agents")
    settled(running_collector, "us-east", "canary")
    return running_collector


def test_a_canary_with_reports_missing_is_in_phase_canary_and_no_other(canary_region):
    got = phases(canary_region, "us-east")
    assert got == {"none": 0, "canary": 1, "baking": 0, "promoted": 0, "aborted": 0}


def test_a_canary_counts_its_cohort_agents_as_ok_failing_and_missing(canary_region):
    counts = {
        s: canary_region.value("clockfleet_rollout_cohort_agents", region="us-east", state=s)
        for s in ("ok", "failing", "missing")
    }
    assert counts == {"ok": 1, "failing": 1, "missing": 1}


def test_a_canary_exports_the_bake_time_left_and_no_overdue(canary_region):
    left = canary_region.value("clockfleet_rollout_bake_remaining_seconds", region="us-east")
    assert 500 < left <= 600
    assert canary_region.value("clockfleet_rollout_overdue_seconds", region="us-east") == 0


def test_a_canary_names_its_failing_agent_in_the_info_reason(canary_region):
    infos = [
        dict(labels)
        for (name, labels), _ in canary_region.samples().items()
        if name == "clockfleet_rollout_info"
    ]
    assert [i["change"] for i in infos] == [CHANGE]
    assert infos[0]["reason"].startswith("a-fail: no good sync")


def test_cohort_agents_carry_their_side_of_the_canary_in_the_info_labels(canary_region):
    sides = {
        dict(labels)["agent"]: dict(labels)["cohort"]
        for (name, labels), _ in canary_region.samples().items()
        if name == "clockfleet_agent_info"
    }
    assert sides == {"a-ok": "canary", "a-fail": "canary", "a-old": ""}


def test_a_canary_past_its_bake_time_without_a_decision_is_overdue(publisher, running_collector):
    late = servers("us-east", 9, issued_at=now_iso(-900), canary=canary(CHANGE, bake_s=600))
    publisher.publish(servers_topic("us-east"), late)
    publisher.publish(report_topic("a-ok"), cohort_report("a-ok", "us-east", 9, CHANGE))
    settled(running_collector, "us-east", "baking")
    overdue = running_collector.value("clockfleet_rollout_overdue_seconds", region="us-east")
    assert 290 < overdue < 400
    left = running_collector.value("clockfleet_rollout_bake_remaining_seconds", region="us-east")
    assert left == 0


def test_an_aborted_rollout_is_in_phase_aborted_with_its_reason_and_end_time(
    publisher, running_collector
):
    reason = "1 of 2 cohort agents failing (> 10 %), e.g. a-fail: no good sync"
    body = servers("us-east", 10, rollout=ended(CHANGE, "aborted", reason, 2, 2, 1))
    publisher.publish(servers_topic("us-east"), body)
    settled(running_collector, "us-east", "aborted")
    s = running_collector.samples()
    [info] = [dict(labels) for (name, labels), _ in s.items() if name == "clockfleet_rollout_info"]
    assert info["reason"] == f"{reason} (auto)"
    end = running_collector.value("clockfleet_rollout_ended_timestamp_seconds", region="us-east")
    assert end is not None and end > 0
    assert (
        "clockfleet_rollout_bake_remaining_seconds",
        frozenset({("region", "us-east")}),
    ) not in s


def test_a_promoted_rollout_is_in_phase_promoted_with_the_recorded_cohort_counts(
    publisher, running_collector
):
    record = ended(CHANGE, "promoted", "2 of 3 cohort agents healthy", 3, 2, 0)
    publisher.publish(servers_topic("eu-west"), servers("eu-west", 4, rollout=record))
    settled(running_collector, "eu-west", "promoted")
    counts = {
        s: running_collector.value("clockfleet_rollout_cohort_agents", region="eu-west", state=s)
        for s in ("ok", "failing", "missing")
    }
    assert counts == {"ok": 2, "failing": 0, "missing": 1}


def test_a_region_list_without_canary_or_record_is_in_phase_none(publisher, running_collector):
    publisher.publish(servers_topic("eu-west"), servers("eu-west", 3))
    settled(running_collector, "eu-west", "none")
    assert (
        running_collector.value("clockfleet_rollout_phase", region="eu-west", phase="canary") == 0
    )
