"""Rows "Fleet at a glance", "Drift" and "Sync health and liveness"."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common, histogram, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder

from panels.parts import (
    CLOCK_ERROR,
    DRIFT_LIMIT_S,
    DS,
    POLL,
    SKEW_WARN_S,
    drift_thresholds,
    instant_table,
    legend,
    one,
    query,
    stat_panel,
)

Panels = list[Builder]


def glance() -> Panels:
    last_report = one("clockfleet_agent_last_report_timestamp_seconds")
    return [
        stat_panel(
            "Agents reporting",
            f"count({last_report})",
            "none",
            [(None, "blue")],
            "Agents with a report on the broker.",
        ),
        stat_panel(
            "Sync success ratio",
            f"avg({one('clockfleet_agent_last_report_ok')})",
            "percentunit",
            [(None, "red"), (0.9, "orange"), (0.99, "green")],
            "Share of agents whose last report was a good sync.",
        ),
        stat_panel(
            "Worst clock error",
            f"max({one(CLOCK_ERROR)})",
            "s",
            [(None, "green"), (SKEW_WARN_S, "orange"), (DRIFT_LIMIT_S, "red")],
            "Largest error bound after the discipline (clockfleet:agent_clock_error_seconds).",
        ),
        stat_panel(
            "Offline agents",
            f"count({one('clockfleet_agent_online')} == 0) or vector(0)",
            "none",
            [(None, "green"), (1, "red")],
            "Agents whose latest status (by session) is offline.",
        ),
        stat_panel(
            "Stale reports",
            f"count(time() - {last_report} > {POLL}) or vector(0)",
            "none",
            [(None, "green"), (1, "orange")],
            "Agents whose last report is older than 2 x their region's poll interval.",
        ),
        stat_panel(
            "Agents behind their list",
            f"sum({one('clockfleet_region_agents_behind')})",
            "none",
            [(None, "green"), (1, "orange")],
            "Agents whose last report applied an older list than the published one.",
        ),
        stat_panel(
            "Authenticated time (NTS)",
            f"avg({one('clockfleet_agent_authenticated')}) or vector(0)",
            "percentunit",
            [(None, "blue")],
            "Share of agents with a good sync whose chosen server answered with NTS "
            "authentication (clockfleet_agent_authenticated; docs/nts.md).",
        ),
    ]


def drift_over_time() -> timeseries.Panel:
    error = one(CLOCK_ERROR)
    return (
        timeseries.Panel()
        .title("Clock error over time")
        .description(
            "Fleet quantiles of the error bound after the discipline (chronyd's tracking, "
            "or the probe where nothing corrected the clock); the lines are the alert limits."
        )
        .datasource(DS)
        .with_target(query(f"quantile(0.5, {error})", "p50", "A"))
        .with_target(query(f"quantile(0.99, {error})", "p99", "B"))
        .with_target(query(f"max({error})", "max", "C"))
        .unit("s")
        .thresholds(drift_thresholds())
        .legend(legend())
        .height(9)
        .span(8)
    )


def drift() -> Panels:
    offset = one("clockfleet_agent_offset_seconds")
    return [
        drift_over_time(),
        histogram.Panel()
        .title("Probe offset distribution")
        .description("Every agent's last probe offset, before its discipline corrected it.")
        .datasource(DS)
        .with_target(query(offset, "{{agent}}").instant())
        .unit("s")
        .combine(True)
        .height(9)
        .span(8),
        table.Panel()
        .title("Worst offenders")
        .description("The 20 agents with the largest clock error after their discipline.")
        .datasource(DS)
        .with_target(instant_table(f"topk(20, {one(CLOCK_ERROR)})"))
        .unit("s")
        .thresholds(drift_thresholds())
        .sort_by([common.TableSortByFieldState().display_name("Value").desc(True)])
        .height(9)
        .span(8),
        timeseries.Panel()
        .title("Worst clock error by region")
        .datasource(DS)
        .with_target(query(f"max by (region) ({one(CLOCK_ERROR)})", "{{region}}"))
        .unit("s")
        .legend(legend())
        .height(8)
        .span(12),
        timeseries.Panel()
        .title("Median probe offset by region")
        .description("The probe's offset before correction: what each sync found.")
        .datasource(DS)
        .with_target(query(f"quantile by (region) (0.5, {offset})", "{{region}}"))
        .unit("s")
        .legend(legend())
        .height(8)
        .span(12),
    ]


def health() -> Panels:
    last_report = one("clockfleet_agent_last_report_timestamp_seconds")
    last_good = one("clockfleet_agent_last_sync_success_timestamp_seconds")
    return [
        timeseries.Panel()
        .title("Sync success ratio by region")
        .datasource(DS)
        .with_target(
            query(f"avg by (region) ({one('clockfleet_agent_last_report_ok')})", "{{region}}")
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .legend(legend())
        .height(8)
        .span(12),
        timeseries.Panel()
        .title("Failing agents by region")
        .datasource(DS)
        .with_target(query(one("clockfleet_region_agents_failing"), "{{region}}"))
        .legend(legend())
        .height(8)
        .span(12),
        table.Panel()
        .title("Offline agents")
        .datasource(DS)
        .with_target(instant_table(f"{one('clockfleet_agent_online')} == 0"))
        .height(8)
        .span(8),
        table.Panel()
        .title("Stale reports (seconds since the last report)")
        .description("Agents silent for more than 2 x their region's poll interval.")
        .datasource(DS)
        .with_target(instant_table(f"time() - {last_report} > {POLL}"))
        .unit("s")
        .height(8)
        .span(8),
        table.Panel()
        .title("Agents with no good sync for 2 x the poll interval")
        .datasource(DS)
        .with_target(instant_table(f"time() - {last_good} > {POLL}"))
        .unit("s")
        .height(8)
        .span(8),
    ]
