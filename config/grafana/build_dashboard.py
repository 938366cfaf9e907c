"""Build the clockfleet Grafana dashboard with grafana-foundation-sdk and write its JSON.

    .venv/bin/python config/grafana/build_dashboard.py          # writes dashboards/clockfleet.json
    .venv/bin/python config/grafana/build_dashboard.py --check  # exit 1 if the file is stale

Every panel reads the collector's series (`clockfleet_agent_*`, `clockfleet_region_*`,
`clockfleet_rollout_*`, `clockfleet_collector_*`) and the alert rules' recording rules through
the `datasource` variable, narrowed to `$region` (and the drill-down to `$agent`). The panels
live in panels/, one module per group of rows.
tests/collector/test_prometheus.py runs every expression here against a live Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # panels/ beside this script

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync
from panels import agent_rows, fleet_rows, list_rows, zone_rows

OUT = Path(__file__).resolve().parent / "dashboards" / "clockfleet.json"
UID = "clockfleet-fleet"

ROWS: list[tuple[str, Callable[[], list[Builder]]]] = [
    ("Fleet at a glance", fleet_rows.glance),
    ("Drift", fleet_rows.drift),
    ("Sync health and liveness", fleet_rows.health),
    ("Time zones", zone_rows.zones),
    ("Agent drill-down ($agent)", agent_rows.drill_down),
    ("Server lists", list_rows.server_lists),
    ("Rollouts", list_rows.rollouts),
    ("Collector", list_rows.collector),
]


def build() -> dashboard.Dashboard:
    d = (
        dashboard.Dashboard("clockfleet: fleet time")
        .uid(UID)
        .description(
            "Clock error, sync health, time zones, agent liveness and server-list compliance "
            "of every host clockfleet manages (series from `clockfleet collector`)."
        )
        .tags(["clockfleet", "ntp", "time"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("1m")
    )
    for variable in agent_rows.variables():
        d = d.with_variable(variable)
    for title, panels in ROWS:
        d = d.with_row(dashboard.Row(title))
        for panel in panels():
            d = d.with_panel(panel)
    built = d.build()
    # Grafana links, repeats and edits panels by id: give each (rows too) its own, in order.
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return built


def render() -> str:
    return json.dumps(build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
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
