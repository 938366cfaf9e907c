"""Helpers the collector tests share: message builders, a plain publisher, a running
collector with its /metrics, a real Prometheus. Fixtures are in conftest.py."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector as RegistryCollector
from prometheus_client.registry import CollectorRegistry

from clockfleet import devstack
from clockfleet.collector.fleet_state import FleetState
from clockfleet.collector.http import serve
from clockfleet.collector.ingest import Collector
from clockfleet.collector.metrics import LinkStats, MetricsRenderer, families
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.devstack.topologies import Topology
from tests.helpers import wait_until

PREFIX = "clock/v1"


# The shipped config without its max_queued_messages: Mosquitto's default queue, with which
# a QoS 1 wildcard subscriber gets at most ~1020 retained messages. The collector and
# `clockfleet status` must see every agent on such a broker too (docs/decisions.md).
DEFAULT_QUEUE = {
    "without": ("max_queued_messages 100000",),
    "why": "Mosquitto's default queue limit (max_queued_messages left out of the shipped "
    "config): readers must see every retained report on an operator's broker that keeps it",
}


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def now_iso(delta_s: float = 0.0) -> str:
    return iso(datetime.now(UTC) + timedelta(seconds=delta_s))


def report(agent: str, **changes: object) -> dict:
    """A good report in the contract's format, as an agent writes it."""
    body: dict = {
        "schema": "clock.report/1",
        "agent": agent,
        "region": "us-east",
        "list_version": 7,
        "ok": True,
        "server": {"host": "192.0.2.10", "port": 123},
        "offset_s": 0.0012,
        "delay_s": 0.0004,
        "stratum": 2,
        "leap": 0,
        "root_distance_s": 0.003,
        "discipline": "observe",
        "timezone": "America/Chicago",
        "software": "0.1.0",
        "at": now_iso(),
        "tried": [
            {"host": "ntp1.us-east.example.net", "port": 123, "outcome": "timeout"},
            {"host": "192.0.2.10", "port": 123, "outcome": "ok"},
        ],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def failed_report(agent: str, **changes: object) -> dict:
    base = report(agent, ok=False, server=None, offset_s=None, delay_s=None, stratum=None)
    base.pop("root_distance_s", None)
    base["discipline"] = "none"
    base["tried"] = [
        {"host": "ntp1.us-east.example.net", "port": 123, "outcome": "timeout"},
        {"host": "192.0.2.10", "port": 123, "outcome": "kod-deny"},
    ]
    base.update(changes)
    return base


def status(agent: str, state: str = "online", session: int = 1, **changes: object) -> dict:
    return {
        "schema": "clock.status/1",
        "agent": agent,
        "state": state,
        "software": "0.1.0",
        "region": "us-east",
        "session": session,
        "since": now_iso(),
        **changes,
    }


def servers(region: str, version: int, **changes: object) -> dict:
    return {
        "schema": "clock.servers/1",
        "region": region,
        "version": version,
        "issued_at": now_iso(),
        "poll_interval_s": 3600,
        "servers": [{"host": "192.0.2.10", "port": 123}],
        **changes,
    }


def report_topic(agent: str) -> str:
    return f"{PREFIX}/agents/{agent}/report"


def status_topic(agent: str) -> str:
    return f"{PREFIX}/agents/{agent}/status"


def servers_topic(region: str) -> str:
    return f"{PREFIX}/regions/{region}/servers"


class _Reference(RegistryCollector):
    def __init__(self, state: FleetState, link: LinkStats) -> None:
        self.state, self.link = state, link

    def describe(self) -> list:
        return []  # stops the registry from calling collect() at registration time

    def collect(self):
        for f in families(self.state, self.link):
            cls = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
            metric = cls(f.name, f.doc, labels=list(f.labels))
            for values, value in f.samples:
                metric.add_metric(list(values), value)
            yield metric


def reference_exposition(state: FleetState, link: LinkStats | None = None) -> str:
    """The collector's metric families written by prometheus_client's own writer: the
    reference the collector's writer (MetricsRenderer) is compared with."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Reference(state, link or LinkStats()))
    return generate_latest(registry).decode()


class Publisher:
    """Writes retained QoS 1 messages as the identity the shipped ACL lets write each one: an
    agent's report and status as that agent, lists and profiles as `publisher`. One short
    MQTT 3.1.1 session per identity per call (paho driven by hand, no thread), so a test can
    write for a thousand agents."""

    def __init__(self, broker: ShippedBroker) -> None:
        self.broker = broker

    def publish(self, topic: str, payload: dict | bytes | str, *, retain: bool = True) -> None:
        self.publish_many([(topic, payload)], retain=retain)

    def publish_many(self, items, *, retain: bool = True) -> None:
        by_identity: dict[str, list[tuple[str, bytes]]] = {}
        for topic, payload in items:
            data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
            by_identity.setdefault(writer_of(topic), []).append((topic, data))
        self.broker.add(*(i for i in by_identity if i != "publisher"))
        for identity, messages in by_identity.items():
            publish_as(self.broker, identity, messages, retain=retain)

    def close(self) -> None:
        pass  # nothing stays open


def writer_of(topic: str) -> str:
    """Who writes `topic` under broker/acl: the agent for its status and report."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[2] == "agents" and parts[4] in ("report", "status"):
        return parts[3]
    return "publisher"


def publish_as(
    broker: ShippedBroker, identity: str, messages: list[tuple[str, bytes]], *, retain: bool
) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity, protocol=mqtt.MQTTv311)
    client.username_pw_set(identity, broker.password(identity))
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    try:
        infos = [client.publish(t, d, qos=1, retain=retain) for t, d in messages]
        deadline = time.monotonic() + 30
        while not all(i.is_published() for i in infos):
            assert time.monotonic() < deadline, f"{identity}: no PUBACK within 30 s"
            assert client.loop(0.05) == mqtt.MQTT_ERR_SUCCESS, f"{identity}: connection lost"
    finally:
        client.disconnect()
        client.loop(0.05)


class RunningCollector:
    """The collector in-process, logged in as `identity`, with its /metrics endpoint."""

    def __init__(self, broker: ShippedBroker | Topology, identity: str = "collector") -> None:
        self.collector = Collector(broker.settings(identity))
        self.collector.start()
        self.renderer = MetricsRenderer(self.collector.state, self.collector.link)
        self.server, _ = serve("127.0.0.1", 0, self.renderer.render)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"

    @property
    def state(self):
        return self.collector.state

    def scrape_text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            return resp.read().decode()

    def samples(self) -> dict[tuple[str, frozenset], float]:
        """/metrics parsed by prometheus_client's parser: (name, labels) -> value."""
        out = {}
        for family in text_string_to_metric_families(self.scrape_text()):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.collector.stop()


class Prometheus:
    def __init__(self, daemon: devstack.Daemon) -> None:
        self.daemon = daemon
        self.base = f"http://127.0.0.1:{daemon.port}"

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/-/ready", timeout=5) as resp:
                return resp.status == 200
        except OSError:  # 503 while it starts up
            return False

    def query(self, expr: str) -> list[dict]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, predicate, timeout_s: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"{expr!r} never matched within {timeout_s} s; last: {result}")


CONFIG = Path(__file__).resolve().parents[2] / "config"


def scraping_config(target: str) -> str:
    """The committed config/prometheus.yml (job, rules) pointed at `target`, every second."""
    config = yaml.safe_load((CONFIG / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(CONFIG / "alerts.yml")]
    job = config["scrape_configs"][0]
    job["scrape_timeout"] = "1s"
    job["static_configs"] = [{"targets": [target]}]
    return yaml.safe_dump(config)


@contextlib.contextmanager
def prometheus_factory() -> Iterator[Callable[[str], Prometheus]]:
    """prometheus('host:port') -> a real Prometheus running the committed config and alert
    rules, scraping that target every second; all stopped on exit."""
    rundir = Path(tempfile.mkdtemp(prefix="cf-prom-", dir="/tmp"))
    started: list[devstack.Daemon] = []

    def start(target: str) -> Prometheus:
        d = devstack.start_prometheus(rundir / f"prometheus{len(started)}", scraping_config(target))
        started.append(d)
        prom = Prometheus(d)
        wait_until(prom.ready, what="Prometheus ready")
        return prom

    try:
        yield start
    finally:
        for d in started:
            d.stop()
        shutil.rmtree(rundir, ignore_errors=True)


# --- canary rollouts (docs/rollout.md) -------------------------------------------------------

CANARY_SERVERS = [{"host": "192.0.2.99", "port": 123}]


def canary(change: str, percent: float = 100, bake_s: int = 600) -> dict:
    """A list's `canary` field trying CANARY_SERVERS (100 %: every agent is in the cohort)."""
    return {
        "id": change,
        "percent": percent,
        "servers": CANARY_SERVERS,
        "bake_s": bake_s,
        "max_failing_pct": 10,
        "min_reported_pct": 80,
        "offset_tolerance_s": 0.5,
    }


def ended(change: str, phase: str, reason: str, cohort: int, reported: int, failing: int) -> dict:
    """A list's `rollout` record, as the list that ended a canary carries it."""
    return {
        "id": change,
        "phase": phase,
        "reason": reason,
        "cohort": cohort,
        "reported": reported,
        "failing": failing,
        "by": "auto",
    }


def cohort_report(agent: str, region: str, version: int, change: str, ok: bool = True) -> dict:
    """A cohort agent's report on the canary's servers (a good or a failed sync)."""
    from clockfleet.protocol.rollout import list_digest

    head = CANARY_SERVERS[0]
    fields = {
        "region": region,
        "list_version": version,
        "cohort": "canary",
        "change": change,
        "list_digest": list_digest([(s["host"], s["port"]) for s in CANARY_SERVERS]),
    }
    if not ok:
        return failed_report(agent, **fields, tried=[{**head, "outcome": "timeout"}])
    return report(agent, **fields, server=head, tried=[{**head, "outcome": "ok"}])
