"""Prometheus in the demo: config/prometheus.yml (with config/alerts.yml) pointed at the
demo's collector, started, and summed up in one line for the screen and the verdict."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from clockfleet import devstack
from clockfleet.demo_fleet import REPO
from clockfleet.demo_procs import Processes, StepFailed


def prometheus_config(collector_port: int) -> str:
    """config/prometheus.yml with the collector's port and absolute paths to the rules."""
    conf = yaml.safe_load((REPO / "config" / "prometheus.yml").read_text())
    # Relative rule files are relative to the config file, which the demo writes elsewhere.
    conf["rule_files"] = [str(REPO / "config" / f) for f in conf.get("rule_files") or []]
    conf.setdefault("global", {})["scrape_interval"] = "2s"
    conf["global"]["evaluation_interval"] = "2s"
    jobs = conf.get("scrape_configs") or []
    if not jobs:
        raise StepFailed("config/prometheus.yml has no scrape_configs")
    # The demo runs one collector: point the clockfleet job's targets at it, and scrape
    # often so the fleet's changes show within seconds.
    for job in jobs:
        if "scrape_timeout" in job:
            job["scrape_timeout"] = "2s"  # may not exceed the scrape interval
        for sc in job.get("static_configs") or []:
            sc["targets"] = [f"127.0.0.1:{collector_port}"]
    return yaml.safe_dump(conf, sort_keys=False)


def start_prometheus(procs: Processes, rundir: Path, collector_url: str) -> str:
    port = urllib.parse.urlsplit(collector_url).port or 0
    pdir = rundir / "prometheus"
    text = prometheus_config(port)
    d = procs.daemon(
        "prometheus (config/prometheus.yml, rules config/alerts.yml)",
        lambda: devstack.start_prometheus(pdir, text),
        pdir / "prometheus.log",
    )
    return f"http://{d.host}:{d.port}"


def prometheus_view(url: str) -> str:
    """One line: does Prometheus scrape the collector, and which alerts are pending/firing."""

    def get(path: str) -> dict[str, Any]:
        with urllib.request.urlopen(url + path, timeout=2) as r:
            body: dict[str, Any] = json.loads(r.read())
            return body

    try:
        up = get("/api/v1/query?query=" + urllib.parse.quote('up{job="clockfleet-collector"}'))
        alerts = get("/api/v1/alerts")["data"]["alerts"]
    except (OSError, ValueError, KeyError) as exc:
        return f"prometheus: not answering ({exc})"
    samples = up.get("data", {}).get("result", [])
    if not samples:
        scraping = "no scrape of the collector yet"
    else:
        scraping = "scraping the collector" if samples[0]["value"][1] == "1" else "collector DOWN"
    if not alerts:
        return f"prometheus: {scraping}; no alerts"
    names = sorted(
        f"{a['labels'].get('alertname')} {a['state']}"
        + (f" ({a['labels']['agent']})" if "agent" in a["labels"] else "")
        for a in alerts
    )
    return f"prometheus: {scraping}; alerts: {', '.join(names)}"
