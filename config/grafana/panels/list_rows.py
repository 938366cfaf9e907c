"""Rows "Server lists", "Rollouts" and "Collector"."""

from __future__ import annotations

from grafana_foundation_sdk.builders import bargauge, common, table, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models.common import BarGaugeDisplayMode, VizOrientation

from panels.parts import (
    DS,
    IN_USE,
    instant_table,
    last_value,
    legend,
    one,
    query,
    stat_panel,
    thresholds,
)

Panels = list[Builder]


def bars(title: str, expr: str, legend_text: str, description: str = "") -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .datasource(DS)
        .with_target(query(expr, legend_text).instant())
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(last_value())
        .height(8)
        .span(8)
    )
    return panel.description(description) if description else panel


def server_lists() -> Panels:
    behind = (
        one("clockfleet_agent_list_version")
        + " < on (region) group_left () max by (region) (clockfleet_region_list_version)"
    )
    return [
        bars(
            "Agents behind the published list, by region",
            one("clockfleet_region_agents_behind"),
            "{{region}}",
        ).thresholds(thresholds((None, "green"), (1, "orange"))),
        table.Panel()
        .title("Version compliance")
        .description("Agents on an older list than their region's published version.")
        .datasource(DS)
        .with_target(instant_table(behind))
        .height(8)
        .span(8),
        table.Panel()
        .title("Servers in use")
        .description("Agents per chosen NTP server (from the agents' last good reports).")
        .datasource(DS)
        .with_target(
            instant_table(f"count by (region, server) ({one('clockfleet_agent_info', IN_USE)})")
        )
        .sort_by([common.TableSortByFieldState().display_name("Value").desc(True)])
        .height(8)
        .span(8),
        timeseries.Panel()
        .title("Published list version and poll interval by region")
        .datasource(DS)
        .with_target(query(one("clockfleet_region_list_version"), "{{region}} version"))
        .with_target(
            query(one("clockfleet_region_poll_interval_seconds"), "{{region}} poll s", "B")
        )
        .decimals(0)
        .legend(legend())
        .height(7)
        .span(24),
    ]


def rollouts() -> Panels:
    return [
        table.Panel()
        .title("Rollout phase by region")
        .description(
            "none, canary (cohort reports pending), baking (all reported), promoted or "
            "aborted, with the change and why it fails or how it ended (docs/rollout.md)."
        )
        .datasource(DS)
        .with_target(instant_table(one("clockfleet_rollout_phase") + " == 1"))
        .with_target(instant_table(one("clockfleet_rollout_info"), ref="B"))
        .height(8)
        .span(8),
        bars(
            "Canary cohort by report",
            one("clockfleet_rollout_cohort_agents"),
            "{{region}} {{state}}",
            "Cohort agents whose report for the change is ok, failing or missing.",
        ).thresholds(thresholds((None, "blue"))),
        timeseries.Panel()
        .title("Bake time left / overdue")
        .description(
            "Seconds until the canary is decided, and past the bake time without a "
            "decision (ClockfleetRolloutStalled beyond 5 minutes)."
        )
        .datasource(DS)
        .with_target(query(one("clockfleet_rollout_bake_remaining_seconds"), "{{region}} left"))
        .with_target(
            query(one("clockfleet_rollout_overdue_seconds"), "{{region}} overdue", ref="B")
        )
        .unit("s")
        .legend(legend())
        .height(8)
        .span(8),
    ]


def rate(metric: str, by: str) -> str:
    return f"max by ({by}) (rate({metric}[$__rate_interval]))"


def collector() -> Panels:
    return [
        timeseries.Panel()
        .title("Messages received by kind")
        .datasource(DS)
        .with_target(
            query(rate("clockfleet_collector_messages_received_total", "kind"), "{{kind}}")
        )
        .unit("reqps")
        .height(7)
        .span(6),
        timeseries.Panel()
        .title("Messages rejected by reason")
        .description("Refused by strict decoding; the agent's last good values were kept.")
        .datasource(DS)
        .with_target(
            query(rate("clockfleet_collector_messages_rejected_total", "reason"), "{{reason}}")
        )
        .unit("reqps")
        .height(7)
        .span(6),
        timeseries.Panel()
        .title("Dropped messages and handler errors")
        .description("A flooded topic's excess dropped unread; unexpected errors (a bug).")
        .datasource(DS)
        .with_target(
            query(rate("clockfleet_collector_messages_dropped_total", "reason"), "{{reason}}")
        )
        .with_target(
            query(rate("clockfleet_collector_handler_errors_total", "instance"), "errors", "B")
        )
        .unit("reqps")
        .height(7)
        .span(6),
        stat_panel(
            "Broker connected",
            "min(clockfleet_collector_broker_connected)",
            "none",
            [(None, "red"), (1, "green")],
            "1 while the collector is connected and subscribed.",
        )
        .height(7)
        .span(6),
    ]
