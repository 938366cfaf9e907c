"""Build the clockfleet Grafana dashboard with grafana-foundation-sdk and write its JSON.

    .venv/bin/python config/grafana/build_dashboard.py          # writes dashboards/clockfleet.json
    .venv/bin/python config/grafana/build_dashboard.py --check  # exit 1 if the file is stale

Every panel reads the collector's series (`clockfleet_agent_*`, `clockfleet_region_*`,
`clockfleet_rollout_*`, `clockfleet_collector_*`) through the `datasource` variable and
narrows them to `$region`.
tests/collector/test_prometheus.py runs every expression here against a live Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    histogram,
    prometheus,
    stat,
    table,
    timeseries,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

OUT = Path(__file__).resolve().parent / "dashboards" / "clockfleet.json"
UID = "clockfleet-fleet"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
R = '{region=~"$region"}'  # every agent/region series narrowed to the chosen regions
IN_USE = '{region=~"$region",server!=""}'

DRIFT_LIMIT_S = 0.5  # time-of-day call routing tolerance (alerts.yml ClockfleetAgentDrift)
SKEW_WARN_S = 0.05  # node-mixin NodeClockSkewDetected
STALE_AFTER_S = 7200  # 2 x the default poll interval


def one(metric: str, selector: str = R) -> str:
    """`metric`'s series once per agent or region: collectors run in pairs on one broker
    (each scraped as its own instance, so every agent's series twice); both read the same
    retained state, so `max without (instance)` folds the copies into one (and keeps the
    survivor's when one collector is down)."""
    return f"max without (instance) ({metric}{selector})"


def query(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    q = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    return q.legend_format(legend) if legend else q


def instant_table(expr: str, ref: str = "A") -> prometheus.Dataquery:
    return query(expr, ref=ref).instant().format(PromQueryFormat.TABLE)


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=v, color=c) for v, c in steps])
    )


def last_value() -> common.ReduceDataOptions:
    return common.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def stat_panel(title: str, expr: str, unit: str, steps, description: str) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .with_target(query(expr))
        .unit(unit)
        .thresholds(thresholds(*steps))
        .reduce_options(last_value())
        .graph_mode(BigValueGraphMode.AREA)
        .color_mode(BigValueColorMode.BACKGROUND)
        .height(4)
        .span(4)
    )


def legend() -> common.VizLegendOptions:
    return (
        common.VizLegendOptions()
        .display_mode(LegendDisplayMode.TABLE)
        .placement(LegendPlacement.RIGHT)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def build() -> dashboard.Dashboard:
    region_var = (
        dashboard.QueryVariable("region")
        .label("Region")
        .datasource(DS)
        .query("label_values(clockfleet_agent_list_version, region)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )
    datasource_var = (
        dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    )

    d = (
        dashboard.Dashboard("clockfleet: fleet time")
        .uid(UID)
        .description(
            "Clock offset, sync health, agent liveness and server-list compliance of every "
            "host clockfleet manages (series from `clockfleet collector`)."
        )
        .tags(["clockfleet", "ntp", "time"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("1m")
        .with_variable(datasource_var)
        .with_variable(region_var)
    )

    d = d.with_row(dashboard.Row("Fleet at a glance"))
    d = (
        d.with_panel(
            stat_panel(
                "Agents reporting",
                f"count({one('clockfleet_agent_last_report_timestamp_seconds')})",
                "none",
                [(None, "blue")],
                "Agents with a report on the broker.",
            )
        )
        .with_panel(
            stat_panel(
                "Sync success ratio",
                f"avg({one('clockfleet_agent_last_report_ok')})",
                "percentunit",
                [(None, "red"), (0.9, "orange"), (0.99, "green")],
                "Share of agents whose last report was a good sync.",
            )
        )
        .with_panel(
            stat_panel(
                "Worst |offset|",
                f"max(abs({one('clockfleet_agent_offset_seconds')}))",
                "s",
                [(None, "green"), (SKEW_WARN_S, "orange"), (DRIFT_LIMIT_S, "red")],
                "Largest clock offset in the fleet (last good report of each agent).",
            )
        )
        .with_panel(
            stat_panel(
                "Offline agents",
                f"count({one('clockfleet_agent_online')} == 0) or vector(0)",
                "none",
                [(None, "green"), (1, "red")],
                "Agents whose latest status (by session) is offline.",
            )
        )
        .with_panel(
            stat_panel(
                "Stale reports",
                f"count(time() - {one('clockfleet_agent_last_report_timestamp_seconds')}"
                f" > {STALE_AFTER_S}) or vector(0)",
                "none",
                [(None, "green"), (1, "orange")],
                "Agents whose last report is older than 2 x the poll interval: whatever "
                "their status says, they are not reporting.",
            )
        )
        .with_panel(
            stat_panel(
                "Agents behind their list",
                f"sum({one('clockfleet_region_agents_behind')})",
                "none",
                [(None, "green"), (1, "orange")],
                "Agents whose last report applied an older list than the published one "
                "(the collector's count; the recording rule clockfleet:agent_behind_list is "
                "the same rule per agent).",
            )
        )
    )

    d = d.with_row(dashboard.Row("Drift"))
    d = (
        d.with_panel(
            histogram.Panel()
            .title("Fleet drift distribution")
            .description("Every agent's last offset, bucketed (server minus local).")
            .datasource(DS)
            .with_target(query(one("clockfleet_agent_offset_seconds"), "{{agent}}").instant())
            .unit("s")
            .combine(True)
            .height(9)
            .span(8)
        )
        .with_panel(
            timeseries.Panel()
            .title("Offset quantiles")
            .description("Fleet offset quantiles over time; the dashed lines are the alert limits.")
            .datasource(DS)
            .with_target(
                query(f"quantile(0.5, {one('clockfleet_agent_offset_seconds')})", "p50", "A")
            )
            .with_target(
                query(f"quantile(0.01, {one('clockfleet_agent_offset_seconds')})", "p1", "B")
            )
            .with_target(
                query(f"quantile(0.99, {one('clockfleet_agent_offset_seconds')})", "p99", "C")
            )
            .unit("s")
            .thresholds(
                thresholds((None, "green"), (SKEW_WARN_S, "orange"), (DRIFT_LIMIT_S, "red"))
            )
            .legend(legend())
            .height(9)
            .span(8)
        )
        .with_panel(
            table.Panel()
            .title("Worst offenders")
            .description("The 20 agents with the largest |offset| in their last good report.")
            .datasource(DS)
            .with_target(instant_table(f"topk(20, abs({one('clockfleet_agent_offset_seconds')}))"))
            .unit("s")
            .thresholds(
                thresholds((None, "green"), (SKEW_WARN_S, "orange"), (DRIFT_LIMIT_S, "red"))
            )
            .sort_by([common.TableSortByFieldState().display_name("Value").desc(True)])
            .height(9)
            .span(8)
        )
        .with_panel(
            timeseries.Panel()
            .title("Worst |offset| by region")
            .datasource(DS)
            .with_target(
                query(
                    f"max by (region) (abs({one('clockfleet_agent_offset_seconds')}))", "{{region}}"
                )
            )
            .unit("s")
            .legend(legend())
            .height(8)
            .span(12)
        )
        .with_panel(
            timeseries.Panel()
            .title("Median offset by region")
            .datasource(DS)
            .with_target(
                query(
                    f"quantile by (region) (0.5, {one('clockfleet_agent_offset_seconds')})",
                    "{{region}}",
                )
            )
            .unit("s")
            .legend(legend())
            .height(8)
            .span(12)
        )
    )

    d = d.with_row(dashboard.Row("Sync health and liveness"))
    d = (
        d.with_panel(
            timeseries.Panel()
            .title("Sync success ratio by region")
            .description("Share of agents whose last report was a good sync.")
            .datasource(DS)
            .with_target(
                query(f"avg by (region) ({one('clockfleet_agent_last_report_ok')})", "{{region}}")
            )
            .unit("percentunit")
            .min(0)
            .max(1)
            .legend(legend())
            .height(8)
            .span(12)
        )
        .with_panel(
            timeseries.Panel()
            .title("Failing agents by region")
            .datasource(DS)
            .with_target(query(one("clockfleet_region_agents_failing"), "{{region}}"))
            .legend(legend())
            .height(8)
            .span(12)
        )
        .with_panel(
            table.Panel()
            .title("Offline agents")
            .description("Agents whose latest status (by session) is offline.")
            .datasource(DS)
            .with_target(instant_table(f"{one('clockfleet_agent_online')} == 0"))
            .height(8)
            .span(8)
        )
        .with_panel(
            table.Panel()
            .title("Stale reports (seconds since the last report)")
            .description("Agents silent for more than 2 x the poll interval.")
            .datasource(DS)
            .with_target(
                instant_table(
                    f"time() - {one('clockfleet_agent_last_report_timestamp_seconds')}"
                    f" > {STALE_AFTER_S}"
                )
            )
            .unit("s")
            .height(8)
            .span(8)
        )
        .with_panel(
            table.Panel()
            .title("Agents with no good sync for 2 x the poll interval")
            .datasource(DS)
            .with_target(
                instant_table(
                    f"time() - {one('clockfleet_agent_last_sync_success_timestamp_seconds')}"
                    f" > {STALE_AFTER_S}"
                )
            )
            .unit("s")
            .height(8)
            .span(8)
        )
    )

    d = d.with_row(dashboard.Row("Server lists"))
    d = (
        d.with_panel(
            bargauge.Panel()
            .title("Agents behind the published list, by region")
            .datasource(DS)
            .with_target(query(one("clockfleet_region_agents_behind"), "{{region}}").instant())
            .thresholds(thresholds((None, "green"), (1, "orange")))
            .display_mode(BarGaugeDisplayMode.GRADIENT)
            .orientation(VizOrientation.HORIZONTAL)
            .reduce_options(last_value())
            .height(8)
            .span(8)
        )
        .with_panel(
            table.Panel()
            .title("Version compliance")
            .description("Agents on an older list than their region's published version.")
            .datasource(DS)
            .with_target(
                instant_table(
                    one("clockfleet_agent_list_version") + " < on (region) group_left ()"
                    " max by (region) (clockfleet_region_list_version)"
                )
            )
            .height(8)
            .span(8)
        )
        .with_panel(
            table.Panel()
            .title("Servers in use")
            .description("Agents per chosen NTP server (from the agents' last good reports).")
            .datasource(DS)
            .with_target(
                instant_table(f"count by (region, server) ({one('clockfleet_agent_info', IN_USE)})")
            )
            .sort_by([common.TableSortByFieldState().display_name("Value").desc(True)])
            .height(8)
            .span(8)
        )
        .with_panel(
            timeseries.Panel()
            .title("Published list version by region")
            .datasource(DS)
            .with_target(query(one("clockfleet_region_list_version"), "{{region}}"))
            .decimals(0)
            .legend(legend())
            .height(7)
            .span(24)
        )
    )

    d = d.with_row(dashboard.Row("Rollouts"))
    d = (
        d.with_panel(
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
            .span(8)
        )
        .with_panel(
            bargauge.Panel()
            .title("Canary cohort by report")
            .description("Cohort agents whose report for the change is ok, failing or missing.")
            .datasource(DS)
            .with_target(
                query(one("clockfleet_rollout_cohort_agents"), "{{region}} {{state}}").instant()
            )
            .thresholds(thresholds((None, "blue")))
            .display_mode(BarGaugeDisplayMode.GRADIENT)
            .orientation(VizOrientation.HORIZONTAL)
            .reduce_options(last_value())
            .height(8)
            .span(8)
        )
        .with_panel(
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
            .span(8)
        )
    )

    d = d.with_row(dashboard.Row("Collector"))
    d = (
        d.with_panel(
            timeseries.Panel()
            .title("Messages received by kind")
            .datasource(DS)
            .with_target(
                query(
                    "max by (kind) (rate(clockfleet_collector_messages_received_total"
                    "[$__rate_interval]))",
                    "{{kind}}",
                )
            )
            .unit("reqps")
            .height(7)
            .span(8)
        )
        .with_panel(
            timeseries.Panel()
            .title("Messages rejected by reason")
            .description("Refused by strict decoding; the agent's last good values were kept.")
            .datasource(DS)
            .with_target(
                query(
                    "max by (reason) (rate(clockfleet_collector_messages_rejected_total"
                    "[$__rate_interval]))",
                    "{{reason}}",
                )
            )
            .unit("reqps")
            .height(7)
            .span(8)
        )
        .with_panel(
            stat_panel(
                "Broker connected",
                "min(clockfleet_collector_broker_connected)",
                "none",
                [(None, "red"), (1, "green")],
                "1 while the collector is connected and subscribed.",
            )
            .height(7)
            .span(8)
        )
    )
    built = d.build()
    # Grafana links, repeats and edits panels by id: give each (rows too) its own, in order.
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return built


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
