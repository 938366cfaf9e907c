"""Two `clockfleet collector` processes on one broker (identities `collector` and
`collector-2`, the real ACL, client id = user name), one real Prometheus scraping both with the
committed config/prometheus.yml and config/alerts.yml (its `for:` durations read as seconds
instead of minutes, so the test waits seconds): nothing is counted twice, no rule fails on the
doubled series, and with one collector killed only ClockfleetCollectorDown fires."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker, start_shipped
from tests.collector.kit import Prometheus, report, servers, status
from tests.collector.test_prometheus import dashboard_queries
from tests.helpers import REPO, wait_until

CONFIG = REPO / "config"
AGENTS = {"pbx-01": "us-east", "pbx-02": "eu-west"}
COLLECTORS = ("collector", "collector-2")


def publish_as(broker: ShippedBroker, identity: str, items: list[tuple[str, dict]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity, protocol=mqtt.MQTTv311)
    c.username_pw_set(identity, broker.password(identity))
    c.connect(broker.daemon.host, broker.daemon.port)
    c.loop_start()
    try:
        for topic, body in items:
            c.publish(topic, json.dumps(body), qos=1, retain=True).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def rules_in_seconds(rundir: Path) -> Path:
    """config/alerts.yml with every `for: Nm` read as `for: Ns` (expressions untouched)."""
    text = re.sub(r"(\n\s+for: )(\d+)m\n", r"\1\2s\n", (CONFIG / "alerts.yml").read_text())
    path = rundir / "alerts.yml"
    path.write_text(text)
    return path


def prometheus_config(targets: list[str], rules: Path) -> str:
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    job = config["scrape_configs"][0]
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": targets}]
    return yaml.safe_dump(config)


@dataclass
class Pair:
    broker: ShippedBroker
    procs: dict[str, subprocess.Popen]
    targets: dict[str, str]
    prom: Prometheus

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.prom.base}{path}", timeout=10) as resp:
            return json.load(resp)["data"]


def start_collector(
    broker: ShippedBroker, identity: str, port: int, rundir: Path
) -> subprocess.Popen:
    log = open(rundir / f"{identity}.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [
            sys.executable, "-m", "clockfleet", "collector", *broker.login(identity),
            "--listen", f"127.0.0.1:{port}",
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    rundir = Path(tempfile.mkdtemp(prefix="cf-pair-", dir="/tmp"))
    broker = start_shipped(rundir, list(AGENTS))  # collector-2 is one of the roles
    procs: dict[str, subprocess.Popen] = {}
    prom_daemon = None
    try:
        publish_as(broker, "publisher", [
            (f"clock/v1/regions/{r}/servers", servers(r, 3)) for r in set(AGENTS.values())
        ])  # fmt: skip
        for agent, region in AGENTS.items():
            publish_as(broker, agent, [
                (f"clock/v1/agents/{agent}/report",
                 report(agent, region=region, list_version=3, offset_s=0.002)),
                (f"clock/v1/agents/{agent}/status", status(agent, "online", 1, region=region)),
            ])  # fmt: skip
        targets = {}
        for identity in COLLECTORS:
            port = devstack.free_port()
            procs[identity] = start_collector(broker, identity, port, rundir)
            targets[identity] = f"127.0.0.1:{port}"
        prom_daemon = devstack.start_prometheus(
            rundir / "prometheus",
            prometheus_config(list(targets.values()), rules_in_seconds(rundir)),
        )
        prom = Prometheus(prom_daemon)
        wait_until(prom.ready, what="Prometheus ready")
        prom.wait_for(
            "count(clockfleet_agent_last_report_ok)",
            lambda r: r and float(r[0]["value"][1]) == 2 * len(AGENTS),
            timeout_s=30,
        )
        yield Pair(broker, procs, targets, prom)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        if prom_daemon is not None:
            prom_daemon.stop()
        broker.daemon.stop()


def test_both_collectors_stay_connected_under_their_own_identities(pair: Pair):
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # a shared identity would knock one off in turn
        up = pair.prom.query("clockfleet_collector_broker_connected == 1")
        assert {s["metric"]["instance"] for s in up} == set(pair.targets.values())
        time.sleep(0.5)


def test_every_dashboard_expression_counts_each_agent_once(pair: Pair):
    doubled = []
    for title, expr in dashboard_queries():
        # A collector's own series (its drops, its errors: by instance, no agent or region)
        # are one per collector by design; every fleet series must be counted once.
        result = [
            s
            for s in pair.prom.query(expr)
            if {"agent", "region"} & set(s["metric"]) or ("instance" not in s["metric"])
        ]
        keys = [
            tuple(sorted((k, v) for k, v in s["metric"].items() if k != "instance")) for s in result
        ]
        if len(keys) != len(set(keys)):
            doubled.append(f"{title}: {expr}")
    assert not doubled, "series counted once per collector:\n" + "\n".join(doubled)
    (reporting,) = [e for t, e in dashboard_queries() if t.startswith("Agents reporting")]
    assert float(pair.prom.query(reporting)[0]["value"][1]) == len(AGENTS)


def test_every_rule_evaluates_without_error_on_the_doubled_series(pair: Pair):
    time.sleep(2)  # a few evaluations over both collectors' series
    rules = [r for g in pair.get("/api/v1/rules")["groups"] for r in g["rules"]]
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not broken


def test_killing_one_collector_fires_only_collector_down(pair: Pair):
    pair.procs["collector-2"].kill()
    pair.procs["collector-2"].wait(10)
    pair.prom.wait_for(
        'ALERTS{alertname="ClockfleetCollectorDown",alertstate="firing"}',
        lambda r: len(r) == 1 and r[0]["metric"]["instance"] == pair.targets["collector-2"],
        timeout_s=30,
    )
    time.sleep(3)  # every other rule (`for:` in seconds here) has had time to fire
    alerts = pair.get("/api/v1/alerts")["alerts"]
    assert [(a["labels"]["alertname"], a["labels"].get("instance")) for a in alerts] == [
        ("ClockfleetCollectorDown", pair.targets["collector-2"])
    ]
