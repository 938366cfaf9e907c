"""The Grafana dashboard is code: the committed JSON is what the builder produces now."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "config" / "grafana"


def load_builder():
    spec = importlib.util.spec_from_file_location("build_dashboard", GRAFANA / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboard_json_equals_what_the_builder_produces():
    builder = load_builder()
    committed = (GRAFANA / "dashboards" / "clockfleet.json").read_text()
    assert committed == builder.render(), "run config/grafana/build_dashboard.py and commit"


def test_dashboard_has_the_region_variable_and_unique_panel_ids():
    board = json.loads((GRAFANA / "dashboards" / "clockfleet.json").read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert "region" in names
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_provisioning_points_grafana_at_the_dashboard_folder_and_a_prometheus():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"
    dash = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "clockfleet.yml").read_text())
    assert dash["providers"][0]["type"] == "file"
    assert dash["providers"][0]["options"]["path"]


def test_dashboard_has_an_agent_drill_down_drift_over_time_and_a_time_zone_panel():
    board = json.loads((GRAFANA / "dashboards" / "clockfleet.json").read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    titles = [p["title"] for p in board["panels"]]
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert "agent" in names
    assert "Agent drill-down ($agent)" in titles and "Time zones" in titles
    assert "Clock error over time" in titles
    assert any('agent=~"$agent"' in e for e in exprs)
    assert any("clockfleet_agent_timezone_info" in e for e in exprs)


def test_the_builder_is_small_modules_of_small_functions():
    import ast

    for path in [GRAFANA / "build_dashboard.py", *sorted((GRAFANA / "panels").glob("*.py"))]:
        text = path.read_text()
        assert len(text.splitlines()) <= 400, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.name}: {node.name} is {length} lines"
