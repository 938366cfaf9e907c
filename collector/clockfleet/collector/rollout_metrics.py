"""Canary rollouts as Prometheus metrics, per region, built at scrape time.

The phase, the cohort's reports and the time left come from `clockfleet.protocol.rollout.
region_status`, the function `clockfleet rollout status` prints, applied to what the
collector holds: each region's published list (its `canary` or `zone_canary`, or its
`rollout` record) and every agent's latest report. Two differences: the collector keeps no
offset from before the change, so a cohort agent's offset jump is judged against zero (as a
decider started during the canary judges it); and it has no fleet file, so a zone change's
cohort is the agents whose reports asked for the old or the new zone. A region without a
published list has no series here.

    clockfleet_rollout_phase{region,phase}            1 for the current phase, 0 for the others
    clockfleet_rollout_cohort_agents{region,state}    ok | failing | missing (no report yet)
    clockfleet_rollout_bake_remaining_seconds{region} bake time left (a canary only)
    clockfleet_rollout_overdue_seconds{region}        past the bake time, undecided (canary)
    clockfleet_rollout_ended_timestamp_seconds{region} when the last rollout ended (issued_at)
    clockfleet_rollout_info{region,change,reason}     1; the change and why it is failing/ended
"""

from __future__ import annotations

import time

from clockfleet.collector.exposition import Family
from clockfleet.collector.fleet_state import FleetState
from clockfleet.collector.text import ID_MAX, printable
from clockfleet.protocol.messages import Report
from clockfleet.protocol.rollout import PHASES, region_status, trial

COHORT_STATES = (("ok", "ok"), ("failing", "failing"), ("missing", "pending"))
REASON_MAX = 200


def rollout_families(state: FleetState, now: float | None = None) -> list[Family]:
    now = time.time() if now is None else now
    snap = state.snapshot()
    phase = Family(
        "clockfleet_rollout_phase",
        "gauge",
        "1 for the region's rollout phase (none, canary: cohort reports pending, baking: all "
        "reported, promoted, aborted), 0 for the others",
        ("region", "phase"),
    )
    cohort = Family(
        "clockfleet_rollout_cohort_agents",
        "gauge",
        "Known agents of the region in the canary's cohort, by the state of their report for "
        "the change (ok, failing, missing); the ended rollout's counts after a decision",
        ("region", "state"),
    )
    remaining = Family(
        "clockfleet_rollout_bake_remaining_seconds",
        "gauge",
        "Bake time left before the canary is decided (0 once passed)",
        ("region",),
    )
    overdue = Family(
        "clockfleet_rollout_overdue_seconds",
        "gauge",
        "Time since the canary's bake time passed without a decision (0 before)",
        ("region",),
    )
    ended = Family(
        "clockfleet_rollout_ended_timestamp_seconds",
        "gauge",
        "When the region's last rollout ended (issued_at of the list that ended it)",
        ("region",),
    )
    info = Family(
        "clockfleet_rollout_info",
        "gauge",
        "Always 1; the region's current or last change and why it fails or how it ended",
        ("region", "change", "reason"),
    )
    reports: dict[str, Report] | None = None
    for region, sl in sorted(snap.regions.items()):
        if trial(sl) is not None and reports is None:
            reports = {a: e.report for a, e in snap.agents.items() if e.report is not None}
        row = region_status(sl, reports or {}, {}, now)
        label = printable(region, ID_MAX)
        for name in PHASES:
            phase.samples.append(((label, name), 1.0 if row["phase"] == name else 0.0))
        for state_label, key in COHORT_STATES:
            cohort.samples.append(((label, state_label), row[key]))
        if trial(sl) is not None:
            remaining.samples.append(((label,), row["time_left_s"]))
            overdue.samples.append(((label,), row["overdue_s"]))
        if sl.rollout is not None:
            ended.samples.append(((label,), sl.issued_at.timestamp()))
        if "change" in row:
            reason = printable(row["reason"], REASON_MAX)
            info.samples.append(((label, printable(row["change"], ID_MAX), reason), 1.0))
    return [phase, cohort, remaining, overdue, ended, info]
