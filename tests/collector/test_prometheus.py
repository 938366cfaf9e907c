"""A real Prometheus scrapes the collector: every agent is queryable, every expression of the
Grafana dashboard returns data, the alert rules load; promtool checks and unit-tests them."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from clockfleet import devstack
from tests.collector.kit import (
    Prometheus,
    Publisher,
    RunningCollector,
    canary,
    cohort_report,
    failed_report,
    now_iso,
    report,
    report_topic,
    servers,
    servers_topic,
    status,
    status_topic,
    wait_until,
)

CONFIG = Path(__file__).resolve().parents[2] / "config"
PROMTOOL = shutil.which("promtool")

# A fleet in which every dashboard panel has something to show: two regions, an agent on an
# old list, a failing one, an offline one, one silent for three hours, a drifting one; and a
# third region with a canary in progress (every agent in its cohort) and one cohort report.
CHANGE = "c5-1f2e3d4c"
CLOCK = {
    "kernel": {"synchronised": True, "maxerror_s": 0.2, "esterror_s": 0.001, "status": 8193},
    "chrony": {
        "reference": "192.0.2.20",
        "stratum": 3,
        "system_time_s": 0.00002,
        "last_offset_s": -0.00001,
        "rms_offset_s": 0.00003,
        "frequency_ppm": 12.5,
        "skew_ppm": 0.2,
        "root_delay_s": 0.004,
        "root_dispersion_s": 0.001,
        "update_interval_s": 64.0,
        "leap": "normal",
    },
}
FLEET = {
    "ok-east": ("us-east", report("ok-east", offset_s=0.002, list_version=8)),
    "drift-east": ("us-east", report("drift-east", offset_s=-0.75, list_version=8)),
    "behind-east": ("us-east", report("behind-east", offset_s=0.01, list_version=7)),
    "fail-east": ("us-east", failed_report("fail-east", list_version=8)),
    "ok-west": (
        "eu-west",
        report(
            "ok-west",
            region="eu-west",
            list_version=3,
            offset_s=0.0003,
            server={"host": "192.0.2.20", "port": 123},
            timezone="Europe/Dublin",
        ),
    ),
    "silent-west": (
        "eu-west",
        report("silent-west", region="eu-west", list_version=3, at=now_iso(-3 * 3600)),
    ),
    "canary-south": ("ap-south", cohort_report("canary-south", "ap-south", 5, CHANGE)),
    # A chrony host with the discipline's state and a zone file whose rules are not Dublin's.
    "zone-west": (
        "eu-west",
        report(
            "zone-west",
            region="eu-west",
            list_version=3,
            discipline="chrony",
            timezone="Europe/Dublin",
            timezone_expected="Europe/Dublin",
            tzdata_version="2019c",
            utc_offset_s=19800,
            clock=CLOCK,
            zone_command={
                "timezone": "Europe/Dublin",
                "at": now_iso(-60),
                "timed_out": False,
                "duration_s": 0.2,
                "exit_code": 0,
            },
        ),
    ),
}
OFFLINE = "ok-west"
PUBLISHED = {"us-east": 8, "eu-west": 3, "ap-south": 5}
CANARIES = {"ap-south": canary(CHANGE)}


@pytest.fixture(scope="module")
def live(prometheus) -> Iterator[tuple[RunningCollector, Prometheus]]:
    rundir = Path(tempfile.mkdtemp(prefix="cf-live-", dir="/tmp"))
    broker = devstack.start_shipped_mosquitto(rundir / "broker")
    collector = None
    try:
        pub = Publisher(broker)
        for region, version in PUBLISHED.items():
            extra = {"canary": CANARIES[region]} if region in CANARIES else {}
            pub.publish(servers_topic(region), servers(region, version, **extra))
        for agent, (region, body) in FLEET.items():
            pub.publish(report_topic(agent), body)
            state = "offline" if agent == OFFLINE else "online"
            pub.publish(status_topic(agent), status(agent, state, 4, region=region))
        pub.publish(report_topic("ghost"), b"{not json")  # one rejection for rate()
        pub.close()
        collector = RunningCollector(broker)
        wait_until(lambda: len(collector.state.agents) == len(FLEET), what="the fleet")
        yield collector, prometheus(f"127.0.0.1:{collector.server.server_port}")
    finally:
        if collector is not None:
            collector.stop()
        broker.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def test_prometheus_returns_the_offset_of_every_agent_with_its_region(live):
    _, prom = live
    with_offset = {a: r for a, (r, body) in FLEET.items() if "offset_s" in body}
    result = prom.wait_for("clockfleet_agent_offset_seconds", lambda r: len(r) == len(with_offset))
    got = {s["metric"]["agent"]: s["metric"]["region"] for s in result}
    assert got == with_offset
    values = {s["metric"]["agent"]: float(s["value"][1]) for s in result}
    assert values["drift-east"] == -0.75


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads((CONFIG / "grafana" / "dashboards" / "clockfleet.json").read_text())
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$region", ".*")
            expr = expr.replace("$agent", ".*")
            out.append((f"{panel['title']} [{target['refId']}]", expr))
    return out


def test_every_dashboard_expression_returns_data_from_the_live_prometheus(live):
    _, prom = live
    queries = dashboard_queries()
    assert len(queries) >= 15
    prom.wait_for("clockfleet_agent_offset_seconds", lambda r: len(r) > 0)
    empty = []
    for title, expr in queries:
        try:
            prom.wait_for(expr, lambda r: len(r) > 0, timeout_s=10)
        except AssertionError:
            empty.append(f"{title}: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_the_alert_rules_load_into_the_live_prometheus_and_evaluate(live):
    _, prom = live
    url = f"{prom.base}/api/v1/rules"

    def rules() -> list[dict]:
        import urllib.request

        with urllib.request.urlopen(url, timeout=10) as resp:
            groups = json.load(resp)["data"]["groups"]
        return [r for g in groups for r in g["rules"]]

    wait_until(lambda: all(r.get("lastEvaluation", "").startswith("2") for r in rules()))
    loaded = rules()
    assert {r["name"] for r in loaded} >= {"ClockfleetAgentDrift", "ClockfleetAgentOffline"}
    assert all(r["health"] == "ok" for r in loaded), [r for r in loaded if r["health"] != "ok"]
    # drift-east is 0.75 s off: its drift alert is pending (for: 5m), nobody else's
    wait_until(lambda: next(r for r in rules() if r["name"] == "ClockfleetAgentDrift")["alerts"])
    drift = next(r for r in rules() if r["name"] == "ClockfleetAgentDrift")
    assert [a["labels"]["agent"] for a in drift["alerts"]] == ["drift-east"]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
@pytest.mark.parametrize(
    "args",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool_accepts_the_config_and_every_alert_unit_test_passes(args):
    r = subprocess.run([PROMTOOL, *args], cwd=CONFIG, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_rule_has_a_promtool_unit_test():
    rules = yaml.safe_load((CONFIG / "alerts.yml").read_text())
    names = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((CONFIG / "alerts_test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"]}
    assert names == tested
    for name in names:
        cases = [
            t for case in tests["tests"] for t in case["alert_rule_test"] if t["alertname"] == name
        ]
        assert any(t["exp_alerts"] for t in cases), f"{name}: no firing case"
        assert any(not t["exp_alerts"] for t in cases), f"{name}: no quiet case"


def test_every_alert_has_a_runbook_url_to_its_own_section_of_docs_runbooks():
    rules = yaml.safe_load((CONFIG / "alerts.yml").read_text())
    runbooks = (CONFIG.parent / "docs" / "runbooks.md").read_text()
    sections = {
        line[3:].strip().lower() for line in runbooks.splitlines() if line.startswith("## ")
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                url = rule["annotations"]["runbook_url"]
                assert url == f"docs/runbooks.md#{rule['alert'].lower()}", url
                assert rule["alert"].lower() in sections, rule["alert"]


def test_every_recording_rule_has_a_promtool_unit_test():
    rules = yaml.safe_load((CONFIG / "alerts.yml").read_text())
    records = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    tests = yaml.safe_load((CONFIG / "alerts_test.yml").read_text())
    tested = {t["expr"] for case in tests["tests"] for t in case.get("promql_expr_test", [])}
    assert records
    assert records <= tested


def test_the_behind_recording_rule_agrees_with_the_collectors_count_per_region(live):
    _, prom = live
    behind = [a for a, (r, body) in FLEET.items() if body["list_version"] < PUBLISHED[r]]
    result = prom.wait_for("clockfleet:agent_behind_list", lambda r: len(r) == len(behind))
    assert sorted(s["metric"]["agent"] for s in result) == sorted(behind)
    counted = prom.query("clockfleet_region_agents_behind")
    by_rule = prom.query("count by (region) (clockfleet:agent_behind_list)")
    collector = {s["metric"]["region"]: float(s["value"][1]) for s in counted}
    rule = {s["metric"]["region"]: float(s["value"][1]) for s in by_rule}
    assert collector == {region: rule.get(region, 0.0) for region in PUBLISHED}
