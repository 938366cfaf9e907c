"""What every panel shares: the data source, the selectors, one query form, thresholds."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import DataSourceRef, Threshold, ThresholdsMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
R = '{region=~"$region"}'  # every agent/region series narrowed to the chosen regions
IN_USE = '{region=~"$region",server!=""}'
A = '{region=~"$region",agent=~"$agent"}'  # the drill-down's agent

DRIFT_LIMIT_S = 0.5  # time-of-day call routing tolerance (alerts.yml ClockfleetAgentDrift)
SKEW_WARN_S = 0.05  # node-mixin NodeClockSkewDetected
# Staleness follows each region's poll interval, as the alerts do (alerts.yml).
POLL = "on (region) group_left () 2 * max by (region) (clockfleet_region_poll_interval_seconds)"
CLOCK_ERROR = "clockfleet:agent_clock_error_seconds"  # alerts.yml's recording rule


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


def drift_thresholds() -> dashboard.ThresholdsConfig:
    return thresholds((None, "green"), (SKEW_WARN_S, "orange"), (DRIFT_LIMIT_S, "red"))


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
