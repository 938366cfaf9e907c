"""A time-zone change tried on a cohort first: who is in it, and how a report judges it.

The cohort's agents get the new zone in their profiles (the publisher sends them), so an
agent's report speaks for the change once the zone it was asked for is the new one. It then
passes when the host really has that zone (read back from its /etc/localtime), when the
host's own zone rules give the offset the judge's tz database gives for the report's time,
and when the operator's `zone_change_command` (a PBX reload) succeeded. docs/rollout.md.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Set as AbstractSet
from datetime import datetime
from typing import Optional

from clockfleet.protocol.messages import Report, ZoneCanary

NO_EVIDENCE = (
    "reports no zone read back from the host (an agent with tz_root null, or older than "
    "the zone fields): no evidence the zone applied"
)


def asked_for(report: Report) -> Optional[str]:
    """The zone the agent was asked for: `timezone_expected`, else (agents that predate it,
    or leave the zone alone) `timezone`, which is then the zone asked for."""
    expected: Optional[str] = report.timezone_expected
    return expected if expected is not None else report.timezone


def follows(
    zc: ZoneCanary,
    old: Optional[str],
    agent: str,
    report: Report,
    followers: Optional[AbstractSet[str]],
) -> bool:
    """Does `agent` take the region's default zone, so that this change concerns it? The
    fleet file says (`followers`); without it, the zone its report asked for is the old or
    the new one. (An agent whose own zone equals the old default then looks like one still
    waiting: only the collector's display, which has no fleet file, can be misled.)"""
    if followers is not None:
        return agent in followers
    return asked_for(report) in (old, zc.timezone)


def expected_offset_s(zone: str, at: datetime) -> Optional[int]:
    """The UTC offset of `zone` at `at` by this host's tz database; None if it has none."""
    try:
        offset = at.astimezone(zoneinfo.ZoneInfo(zone)).utcoffset()
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None
    return None if offset is None else int(offset.total_seconds())


def hhmm(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def verdict(zc: ZoneCanary, report: Optional[Report]) -> Optional[str]:
    """None while the report is not about the new zone yet (its profile has not arrived),
    "ok", or why the cohort agent fails."""
    if report is None or asked_for(report) != zc.timezone:
        return None
    if report.timezone_expected is None:
        return NO_EVIDENCE
    if report.timezone != zc.timezone:
        has = report.timezone or "none readable"
        why = f"zone {zc.timezone} not applied, the host has {has}"
        return f"{why}: {report.error}" if report.error else why
    if report.utc_offset_s is None:
        return f"the host's zone file for {zc.timezone} is unreadable"
    want = expected_offset_s(zc.timezone, report.at)
    if want is not None and want != report.utc_offset_s:
        return (
            f"the host's rules give {zc.timezone} UTC{hhmm(report.utc_offset_s)}, not "
            f"UTC{hhmm(want)} (tzdata {report.tzdata_version or 'unknown'})"
        )
    cmd = report.zone_command
    if cmd is not None and cmd.timezone == zc.timezone:
        if cmd.timed_out:
            return f"zone_change_command timed out after {cmd.duration_s:.0f} s"
        if cmd.exit_code != 0:
            code = "did not run" if cmd.exit_code is None else f"exit code {cmd.exit_code}"
            return f"zone_change_command failed ({code}): {cmd.error or ''}".rstrip(": ")
    return "ok"
