"""What one sync reports: the `clock.report/1` built from a probe and what the backend did.

A plain function of its inputs (no MQTT, no clock of its own), checked against the strict
decoder before it goes out: readers must never refuse what an agent publishes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

import msgspec

from clockfleet.agent.choice import ProbeResult
from clockfleet.agent.clock_backends import Applied
from clockfleet.agent.zone_change import ZoneOutcome
from clockfleet.protocol import codec, rollout
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.messages import (
    MAX_OFFSET_S,
    MAX_TRIED,
    ClockState,
    Profile,
    Report,
    Server,
    ServerList,
    TimeSetter,
    Tried,
    ZoneCommand,
    clip_text,
)

log = logging.getLogger("clockfleet.agent")


@dataclass(frozen=True)
class SyncJob:
    """A snapshot of what one sync works from (the loop may apply a new list meanwhile)."""

    server_list: ServerList
    profile: Optional[Profile]
    timezone: Optional[str]
    first_sync: bool = False  # no good sync yet since start: the panic limit is waived
    # A list with a canary: this agent's side of it ("canary" or "rest"). `server_list` then
    # holds the servers this agent probes (rollout.servers_for), the canary's or the list's.
    cohort: Optional[str] = None


def job_for(
    agent_id: str,
    server_list: ServerList,
    profile: Optional[Profile],
    tz: Optional[str],
    first_sync: bool,
) -> SyncJob:
    """The sync job for `server_list` as this agent reads it: with a canary, the cohort's
    servers or the list's own (clockfleet.protocol.rollout.servers_for)."""
    servers, cohort = rollout.servers_for(server_list, agent_id)
    if cohort is not None:
        server_list = msgspec.structs.replace(server_list, servers=servers)
    return SyncJob(server_list, profile, tz, first_sync=first_sync, cohort=cohort)


@dataclass(frozen=True)
class SyncOutcome:
    result: Optional[ProbeResult]  # None when the sync crashed
    applied: Optional[Applied]  # what the clock backend did, if it ran
    timezone: Optional[str]
    tz_error: Optional[str]
    error: Optional[str]
    # This host's wall and monotonic clocks when the probe's sample was taken: the corrected
    # time of any later moment is then wall + offset + monotonic elapsed, whether or not a
    # backend has stepped the clock since (chronyd steps it when it gets round to it).
    measured_at: Optional[tuple[float, float]] = None
    clock: Optional[ClockState] = None  # what the discipline achieved (clock_state.py)
    zone: Optional[ZoneOutcome] = None  # the zone asked for, the host's (zone_change.py)
    # Other time setters on the host (time_setters.py); None: not looked for.
    time_setters: Optional[list[TimeSetter]] = None


def _seconds(value: Optional[float]) -> Optional[float]:
    """A number the report may carry (|x| < 2^31), else None: a report is never refused."""
    if value is None or value != value or abs(value) >= MAX_OFFSET_S:
        return None
    return float(value)


def build_report(
    agent_id: str,
    job: SyncJob,
    o: SyncOutcome,
    wall_now: float,
    software: str,
    mono_now: Optional[float] = None,
    zone_command: Optional[ZoneCommand] = None,
) -> Report:
    """The report of one sync. `at` is the corrected time: with the sample's own clock
    readings (`o.measured_at`, `mono_now`) the time of the sample plus the offset plus the
    time since; without, this host's clock plus the offset when the backend only observed,
    its own clock once a backend stepped it. A failed sync knows no better than its own clock.
    `zone_command`: the last zone change's command result, carried until the next change."""
    res = o.result
    ok = bool(res is not None and res.ok and o.applied is not None and o.applied.ok)
    fields, at = _chosen(o, wall_now, mono_now) if ok else ({}, wall_now)
    errors = [e for e in (o.error, o.tz_error) if e]
    report = Report(
        schema="clock.report/1",
        agent=agent_id,
        region=job.server_list.region,
        list_version=job.server_list.version,
        ok=ok,
        discipline=o.applied.discipline if ok and o.applied else "none",  # type: ignore[arg-type]
        at=datetime.fromtimestamp(at, timezone.utc),
        tried=_tried(res)[:MAX_TRIED],
        timezone=o.timezone,
        profile_version=job.profile.version if job.profile else None,
        software=clip_text(software),
        error=clip_text("; ".join(errors)) if errors else None,
        note=clip_text(res.note) if ok and res is not None and res.note else None,
        list_digest=rollout.list_digest(job.server_list.servers),
        cohort=job.cohort,  # type: ignore[arg-type]
        change=job.server_list.canary.id if job.server_list.canary else None,
        clock=o.clock,
        zone_command=zone_command,
        time_setters=o.time_setters,
        **_zone_fields(o.zone, at),
        **fields,
    )
    checked = _checked(agent_id, report)
    if checked is None:
        # What the host said about its clock or zone must never cost the sync's report.
        bare = msgspec.structs.replace(report, clock=None, zone_command=None, **_NO_ZONE)
        checked = _checked(agent_id, bare)
    if checked is None:
        return _internal_error_report(agent_id, job, wall_now, Rejected("invalid-field", "see log"))
    return checked


_NO_ZONE: dict[str, Any] = {"timezone_expected": None, "tzdata_version": None, "utc_offset_s": None}


def _checked(agent_id: str, report: Report) -> Optional[Report]:
    """`report` if the strict decoder accepts it, else None (logged): never publish what
    readers would refuse. No future rule: `at` is the corrected time, while this host's clock
    may be far off."""
    try:
        codec.decode(Report, codec.encode(report), topic_id=agent_id, check_future=False)
    except Rejected as r:
        log.error("%s: built an invalid report (%s): %s", agent_id, r.reason, r.detail)
        return None
    return report


def _zone_fields(zone: Optional[ZoneOutcome], at: float) -> dict[str, Any]:
    """The zone asked for, the host's tzdata version and the UTC offset its own rules give
    its zone at the report's time (a managed zone only)."""
    if zone is None or (zone.expected is None and zone.host_zone is None):
        return {}
    host = zone.host_zone
    return {
        "timezone_expected": zone.expected,
        "tzdata_version": host.tzdata_version if host is not None else None,
        "utc_offset_s": (
            host.utc_offset_s(datetime.fromtimestamp(at, timezone.utc)) if host else None
        ),
    }


def _tried(res: Optional[ProbeResult]) -> list[Tried]:
    out = []
    for a in res.tried if res is not None else []:
        s = a.sample
        out.append(
            Tried(
                host=a.host,
                port=a.port,
                outcome=a.outcome,
                detail=clip_text(a.detail),
                offset_s=_seconds(s.offset_s) if s else None,
                delay_s=_seconds(s.delay_s) if s and s.delay_s >= 0 else None,
                auth="nts" if a.auth == "nts" else None,
            )
        )
    return out


def _chosen(
    o: SyncOutcome, wall_now: float, mono_now: Optional[float]
) -> tuple[dict[str, Any], float]:
    """The chosen server's fields of a good sync's report, and the report's corrected time."""
    assert o.result is not None and o.result.chosen is not None and o.applied is not None
    chosen = o.result.chosen
    s = chosen.sample
    assert s is not None
    offset = _seconds(s.offset_s)
    fields: dict[str, Any] = {
        "server": Server(chosen.host, chosen.port),
        "offset_s": offset,
        "delay_s": _seconds(max(s.delay_s, 0.0)),
        "stratum": s.stratum,
        "leap": s.leap,
        "root_distance_s": _seconds(max(s.root_distance_s, 0.0)),
    }
    at = wall_now
    if offset is not None and o.measured_at is not None and mono_now is not None:
        wall_then, mono_then = o.measured_at
        at = wall_then + offset + (mono_now - mono_then)
    elif offset is not None and o.applied.discipline == "observe":
        at += offset
    return fields, at


def _internal_error_report(agent_id: str, job: SyncJob, wall_now: float, r: Rejected) -> Report:
    return Report(
        schema="clock.report/1",
        agent=agent_id,
        region=job.server_list.region,
        list_version=job.server_list.version,
        ok=False,
        discipline="none",
        at=datetime.fromtimestamp(wall_now, timezone.utc),
        tried=[],
        list_digest=rollout.list_digest(job.server_list.servers),
        cohort=job.cohort,  # type: ignore[arg-type]
        error=clip_text(f"internal: invalid report ({r.reason}: {r.detail})"),
    )
