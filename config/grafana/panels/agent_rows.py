"""The `region`, `agent` and `datasource` variables, and the row "Agent drill-down": one
agent (the `agent` variable) over time: the probe's offset against the error left after its
discipline, chronyd's tracking, the kernel's state, its zone."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, timeseries
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models.dashboard import VariableRefresh, VariableSort

from panels.parts import CLOCK_ERROR, DS, A, drift_thresholds, legend, one, query

Panels = list[Builder]


def variables() -> list[Builder]:
    region = (
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
    agent = (
        dashboard.QueryVariable("agent")
        .label("Agent")
        .datasource(DS)
        .query('label_values(clockfleet_agent_list_version{region=~"$region"}, agent)')
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
    )
    datasource = dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
    return [datasource, region, agent]


def series(title: str, unit: str, *targets: tuple[str, str], description: str = ""):
    panel = timeseries.Panel().title(title).datasource(DS).unit(unit).legend(legend())
    for ref, (expr, legend_text) in zip("ABCD", targets, strict=False):
        panel = panel.with_target(query(expr, legend_text, ref))
    panel = panel.height(8).span(8)
    return panel.description(description) if description else panel


def drill_down() -> Panels:
    return [
        series(
            "$agent: probe offset and clock error",
            "s",
            (one("clockfleet_agent_offset_seconds", A), "probe offset (before correction)"),
            (one(CLOCK_ERROR, A), "clock error after the discipline"),
            description="Drift over time: what each sync found, and what was left after it.",
        ).thresholds(drift_thresholds()),
        series(
            "$agent: chronyd tracking",
            "s",
            (one("clockfleet_agent_chrony_tracking_system_time_seconds", A), "system time"),
            (one("clockfleet_agent_chrony_tracking_last_offset_seconds", A), "last offset"),
            (one("clockfleet_agent_chrony_tracking_root_dispersion_seconds", A), "dispersion"),
        ),
        series(
            "$agent: frequency",
            "ppm",
            (one("clockfleet_agent_chrony_tracking_frequency_ppms", A), "frequency"),
            (one("clockfleet_agent_chrony_tracking_skew_ppms", A), "skew"),
        ),
        series(
            "$agent: kernel clock",
            "s",
            (one("clockfleet_agent_timex_maxerror_seconds", A), "maxerror"),
            (one("clockfleet_agent_timex_estimated_error_seconds", A), "estimated error"),
            (one("clockfleet_agent_timex_sync_status", A), "synchronised (1)"),
        ),
        series(
            "$agent: sync and reports",
            "none",
            (one("clockfleet_agent_last_report_ok", A), "last report ok"),
            (one("clockfleet_agent_online", A), "online"),
            (one("clockfleet_agent_list_version", A), "list version"),
        ),
        series(
            "$agent: UTC offset, own rules and current rules",
            "s",
            (one("clockfleet_agent_utc_offset_seconds", A), "host's rules"),
            (one("clockfleet_agent_utc_offset_expected_seconds", A), "current rules"),
        ),
    ]
