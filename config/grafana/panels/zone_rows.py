"""Row "Time zones": the zone each host has against the one asked for, and whether its own
zone rules give the UTC offset current rules give (alerts ClockfleetAgentTimezoneMismatch,
ClockfleetZoneRulesDisagree)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import table
from grafana_foundation_sdk.cog.builder import Builder

from panels.parts import DS, R, instant_table, one, stat_panel

Panels = list[Builder]


def zones() -> Panels:
    disagree = (
        f"{one('clockfleet_agent_utc_offset_seconds')}"
        f" - {one('clockfleet_agent_utc_offset_expected_seconds')}"
    )
    return [
        table.Panel()
        .title("Time zones")
        .description(
            "Per agent: the zone the host has, the zone its profile or list asks for, its "
            "tzdata version, and its UTC offset by its own rules minus current rules' (B)."
        )
        .datasource(DS)
        .with_target(instant_table(one("clockfleet_agent_timezone_info")))
        .with_target(instant_table(disagree, ref="B"))
        .height(8)
        .span(12),
        stat_panel(
            "Zone mismatches",
            f"sum({one('clockfleet_agent_timezone_mismatch')}) or vector(0)",
            "none",
            [(None, "green"), (1, "red")],
            "Hosts whose zone is not the one their profile or list asks for.",
        )
        .height(8)
        .span(4),
        stat_panel(
            "Zone rules that disagree",
            f"count(({disagree}) != 0) or vector(0)",
            "none",
            [(None, "green"), (1, "red")],
            "Hosts whose own tzdata gives their zone another UTC offset than current rules.",
        )
        .height(8)
        .span(4),
        table.Panel()
        .title("Hosts per zone and tzdata version")
        .datasource(DS)
        .with_target(
            instant_table(
                "count by (timezone, tzdata) "
                f"(max without (instance) (clockfleet_agent_timezone_info{R}))"
            )
        )
        .height(8)
        .span(4),
    ]
