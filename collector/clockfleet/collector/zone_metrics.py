"""Per-agent series of the time zone: the one asked for, the one the host has, and whether
the host's own zone rules give the UTC offset the collector's current rules give.

`clockfleet_agent_utc_offset_expected_seconds` is the offset of the zone asked for (the
host's own when the report names none) at the report's `at`, by the collector's tz
database: the same instant the host's offset was computed for, so the two differ only when
the rules (or the zone) differ, never around a DST change between reports. Alerts:
ClockfleetAgentTimezoneMismatch (names differ) and ClockfleetZoneRulesDisagree (names agree,
offsets do not), config/alerts.yml.
"""

from __future__ import annotations

import zoneinfo

from clockfleet.collector.text import ID_MAX, LABEL_TEXT_MAX, printable
from clockfleet.protocol.messages import Report

TIMEZONE_INFO = "clockfleet_agent_timezone_info"
TIMEZONE_INFO_HELP = (
    "Always 1; the zone the host has, the zone its profile or list asks for, its tzdata version"
)
TIMEZONE_LABELS = ("agent", "region", "timezone", "expected_timezone", "tzdata")

ZONE_GAUGES: tuple[tuple[str, str], ...] = (
    (
        "clockfleet_agent_utc_offset_seconds",
        "UTC offset of the host's zone by the host's own zone rules, at its last report",
    ),
    (
        "clockfleet_agent_utc_offset_expected_seconds",
        "UTC offset of the zone asked for by the collector's current tz database, at the "
        "same instant",
    ),
    (
        "clockfleet_agent_timezone_mismatch",
        "1 when the host's zone is not the one its profile or list asks for",
    ),
    (
        "clockfleet_agent_zone_command_ok",
        "1 when the command run after the last zone change exited 0 in time",
    ),
    (
        "clockfleet_agent_zone_command_timestamp_seconds",
        "When the command after the last zone change ran",
    ),
    (
        "clockfleet_agent_zone_command_duration_seconds",
        "How long the command after the last zone change ran",
    ),
)


def expected_offset_s(report: Report) -> float | None:
    name = report.timezone_expected or report.timezone
    if name is None or report.utc_offset_s is None:
        return None
    try:
        offset = report.at.astimezone(zoneinfo.ZoneInfo(name)).utcoffset()
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None
    return offset.total_seconds() if offset is not None else None


def zone_values(report: Report | None) -> list[float | None]:
    """One value or None per ZONE_GAUGES entry."""
    if report is None:
        return [None] * len(ZONE_GAUGES)
    has, wanted = report.timezone, report.timezone_expected
    mismatch = None if has is None or wanted is None else float(has != wanted)
    utc = float(report.utc_offset_s) if report.utc_offset_s is not None else None
    c = report.zone_command
    command: list[float | None] = [None, None, None]
    if c is not None:
        command = [float(c.error is None), c.at.timestamp(), c.duration_s]
    return [utc, expected_offset_s(report), mismatch, *command]


def timezone_labels(agent: str, region: str, report: Report | None) -> tuple[str, ...] | None:
    """The timezone_info series' label values, or None (no zone in the report)."""
    if report is None or (report.timezone is None and report.timezone_expected is None):
        return None
    return (
        printable(agent, ID_MAX),
        region,
        printable(report.timezone or "", LABEL_TEXT_MAX),
        printable(report.timezone_expected or "", LABEL_TEXT_MAX),
        printable(report.tzdata_version or "", LABEL_TEXT_MAX),
    )
