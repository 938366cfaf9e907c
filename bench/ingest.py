"""Figure 2: the collector's ingest rate (live and from a retained backlog), a restarted
collector in front of a retained fleet, /metrics render time and collector RSS.

Reports are valid clock.report/1 messages, one retained topic per agent, streamed by a raw
pre-encoded publisher (bench.mqtt_raw) so that the publisher is never the bottleneck. Each
consumer (the collector, `mosquitto_sub`, a bare paho subscriber) drains the same stream on
its own, one after the other, on the same broker.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import profiling
from bench.ingest_costs import per_report_costs
from bench.mqtt_raw import RawPublisher, report_stream
from bench.results import figure, row
from bench.stack import Bench, Worker, median

KEY = "ingest"
HELP = "collector reports/s live and from a backlog, restart with N retained, /metrics, RSS"
FILTER = "clock/v1/agents/+/report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reports", type=int, default=50000, help="reports per stream (50000)")
    p.add_argument(
        "--fleet", type=int, nargs="+", default=[1000, 10000], help="fleet sizes (1000 10000)"
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per consumer and mode; the median counts (3)"
    )


def rate(ev: dict[str, Any]) -> float:
    return (ev["count"] - 1) / max(ev["last"] - ev["first"], 1e-9)


class SubDrain:
    """`mosquitto_sub` writing to a pipe we count lines of, noting first and last arrival."""

    def __init__(self, host: str, port: int, count: int) -> None:
        self.t_spawn = time.monotonic()
        argv = ["mosquitto_sub", "-h", host, "-p", str(port), "-t", FILTER, "-q", "0"]
        self.proc = subprocess.Popen([*argv, "-C", str(count)], stdout=subprocess.PIPE)
        self.first = self.last = 0.0
        self.lines = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(1 << 16):
            now = time.monotonic()
            if not self.first:
                self.first = now
            self.last = now
            self.lines += chunk.count(b"\n")

    def wait(self, timeout: float) -> float:
        """Seconds from spawn to exit."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.thread.join(5)
        return time.monotonic() - self.t_spawn


def publish(mosq, agents: list[str]) -> float:
    stream, count = report_stream(agents)
    pub = RawPublisher(mosq.host, mosq.port)
    try:
        t0, t1 = pub.publish_stream(stream, count)
    finally:
        pub.close()
    return count / (t1 - t0)


def metrics_ms(port: int, times: int = 5) -> tuple[float, float, int]:
    """Wall time of the first GET /metrics after the fleet arrived (nothing cached yet), the
    median of the following ones, and the body's size."""
    url = f"http://127.0.0.1:{port}/metrics"
    samples, size = [], 0
    for _ in range(times):
        t0 = time.perf_counter()
        with urllib.request.urlopen(url, timeout=30) as r:
            size = len(r.read())
        samples.append(time.perf_counter() - t0)
    return samples[0] * 1000, median(samples[1:]) * 1000, size


def collector(b: Bench, mosq, *extra: Any, profile_to: Path | None = None) -> Worker:
    return b.worker(
        "bench.collector_worker",
        *("--host", mosq.host, "--port", mosq.port, *extra),
        profile_to=profile_to,
    )


def profile_live(m: int) -> list[str]:
    """The collector's MQTT thread under py-spy while it drains a live stream."""
    agents = [f"a{i}" for i in range(m)]
    with Bench(f"{KEY}-profile") as b:
        mosq = b.mosquitto()
        out = b.rundir / "collector-profile.txt"
        w = collector(b, mosq, profile_to=out)
        w.expect("ready", 30)
        w.send({"cmd": "count", "n": m})
        w.expect("ok", 10)
        publish(mosq, agents)
        w.expect("counted", 120)
        w.stop()
        shares = profiling.breakdown(
            out,
            {
                "in the collector's fast path (the rest is the link and the loop)": (
                    "Intake.on_raw_publish"
                ),
                "FleetState.ingest (decode, checks, state)": "FleetState.ingest",
                "json parsing in codec.parse_json_object": "parse_json_object",
                "msgspec conversion and semantic checks": "_check_semantics",
            },
            under="Collector._pump",
        )
        return shares + profiling.summary(out, under="Collector._pump")


CONSUMERS = ("collector", "mosquitto_sub", "paho")


def live_rate(b: Bench, mosq, agents: list[str], consumer: str) -> tuple[float, float]:
    """(consumer's rate, publisher's offered rate) for one stream the consumer was
    subscribed before."""
    m = len(agents)
    if consumer == "mosquitto_sub":
        sub = SubDrain(mosq.host, mosq.port, m)
        time.sleep(0.5)  # mosquitto_sub says nothing when subscribed; it is, well before this
        offered = publish(mosq, agents)
        sub.wait(120)
        return (sub.lines - 1) / max(sub.last - sub.first, 1e-9), offered
    if consumer == "collector":
        w = collector(b, mosq)
    else:
        w = b.worker("bench.ref_drain", "--host", mosq.host, "--port", mosq.port)
    w.expect("ready", 30)
    w.send({"cmd": "count", "n": m})
    w.expect("ok", 10)
    offered = publish(mosq, agents)
    consumed = rate(w.expect("counted", 120))
    w.stop()
    return consumed, offered


def backlog_rate(b: Bench, mosq, m: int, consumer: str) -> float:
    """Rate of a fresh consumer draining the m retained reports the broker holds."""
    if consumer == "mosquitto_sub":
        return m / SubDrain(mosq.host, mosq.port, m).wait(120)
    if consumer == "collector":
        w = collector(b, mosq, "--expect", m)
    else:
        w = b.worker("bench.ref_drain", "--host", mosq.host, "--port", mosq.port,
                     "--expect", m)  # fmt: skip
    ev = w.expect("known", 120)
    w.stop()
    return m / (ev["t_all"] - ev["t_start"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    m = args.reports
    agents = [f"a{i}" for i in range(m)]
    notes: list[str] = []
    rows: list[dict[str, Any]] = []
    live_runs: dict[str, list[float]] = {c: [] for c in CONSUMERS}
    backlog_runs: dict[str, list[float]] = {c: [] for c in CONSUMERS}
    offered: list[float] = []
    with Bench(KEY) as b:
        mosq = b.mosquitto()
        # one consumer at a time, the same stream each time; rounds interleave consumers so
        # that a burst of other work on the machine does not hit one consumer only
        for _ in range(args.repeat):
            for c in CONSUMERS:
                consumed, offer = live_rate(b, mosq, agents, c)
                live_runs[c].append(consumed)
                offered.append(offer)
        for _ in range(args.repeat):
            for c in CONSUMERS:
                backlog_runs[c].append(backlog_rate(b, mosq, m, c))
    live = {name: median(v) for name, v in live_runs.items()}
    backlog = {name: median(v) for name, v in backlog_runs.items()}
    for mode, runs in (("live", live_runs), ("backlog", backlog_runs)):
        notes.append(
            f"{mode} rates of each run (reports/s): "
            + "; ".join(f"{k} " + ", ".join(f"{r:,.0f}" for r in v) for k, v in runs.items())
        )
    for mode, values in (("live", live), ("backlog", backlog)):
        rows.append(
            row(
                f"collector ingest, {mode}, {m} reports, median of {args.repeat}",
                "reports/s",
                values["collector"],
                goal=20000.0,
                goal_kind="min",
                reference="mosquitto_sub",
                reference_value=values["mosquitto_sub"],
            )
        )
        rows.append(
            row(
                f"collector ingest, {mode}",
                "reports/s",
                values["collector"],
                goal=20000.0,
                goal_kind="min",
                reference="bare paho subscriber + json.loads, QoS 0",
                reference_value=values["paho"],
            )
        )
    notes.append(
        "live: the raw publisher offered "
        + ", ".join(f"{o:,.0f}" for o in offered)
        + " reports/s (first byte sent to last PUBACK) to collector, mosquitto_sub and paho "
        "in turn"
    )

    # --- a restarted collector in front of a retained fleet; /metrics; RSS ---------------
    details = [
        "| fleet | every agent known after (re)start | bare paho subscriber | GET /metrics first "
        "/ again | /metrics size | collector RSS |",
        "|---|---|---|---|---|---|",
    ]
    for n in args.fleet:
        with Bench(f"{KEY}{n}") as b:
            mosq = b.mosquitto()
            publish(mosq, [f"a{i}" for i in range(n)])
            known_runs = []
            for i in range(args.repeat):  # the last restart stays up for /metrics and RSS
                w = collector(b, mosq, "--expect", n)
                ev = w.expect("known", 60)
                known_runs.append(ev["t_all"] - ev["t_start"])
                if i < args.repeat - 1:
                    w.stop()
            known = median(known_runs)
            port = w.expect("ready", 10)["metrics_port"]
            cold_ms, ms, size = metrics_ms(port)
            w.send({"cmd": "rss"})
            rss = w.expect("rss", 10)["rss"] / 2**20
            w.stop()
            ref_known = median([n / backlog_rate(b, mosq, n, "paho") for _ in range(args.repeat)])
            default_known: dict[str, float] | None = None
            if n == max(args.fleet):
                # Mosquitto's default queue limits: the collector reads at QoS 0 and must
                # still get every retained report (docs/decisions.md).
                dflt = b.mosquitto(max_queued=1000)
                publish(dflt, [f"a{i}" for i in range(n)])
                w = collector(b, dflt, "--expect", n)
                try:
                    ev = w.expect("known", 10)
                    default_known = {"agents": n, "seconds": ev["t_all"] - ev["t_start"]}
                except TimeoutError:
                    w.send({"cmd": "rss"})
                    default_known = {"agents": w.expect("rss", 10)["agents"], "seconds": -1}
                w.stop()
                sub = SubDrain(dflt.host, dflt.port, n)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    sub.wait(10)
                default_known["mosquitto_sub"] = sub.lines
                ref = b.worker("bench.ref_drain", "--host", dflt.host, "--port", dflt.port,
                               "--expect", n)  # fmt: skip
                try:
                    ref.expect("known", 10)
                    default_known["paho"] = n
                except TimeoutError:
                    ref.send({"cmd": "seen"})
                    default_known["paho"] = ref.expect("seen", 10)["n"]
                ref.stop()
        details.append(
            f"| {n} | {known:.3f} s | {ref_known:.3f} s | {cold_ms:.1f} / {ms:.1f} ms "
            f"| {size / 1024:.0f} KiB "
            f"| {rss:.1f} MB |"
        )
        rows.append(
            row(
                f"restarted collector, {n} retained: every agent known, median of {args.repeat}",
                "s",
                known,
                goal=1.0 if n >= 10000 else None,
                reference="bare paho subscriber, same backlog",
                reference_value=ref_known,
            )
        )
        rows.append(row(f"GET /metrics with {n} agents, first (cold)", "ms", cold_ms, goal=300.0))
        rows.append(row(f"GET /metrics with {n} agents, again (median of 4)", "ms", ms))
        rows.append(row(f"collector RSS with {n} agents", "MB", rss))
        if default_known is not None:
            rows.append(
                row(
                    f"restarted collector, {n} retained, Mosquitto default queue limits: "
                    "agents known",
                    "count",
                    default_known["agents"],
                    goal=float(n),
                    goal_kind="min",
                    reference="mosquitto_sub -q 0, same broker",
                    reference_value=default_known["mosquitto_sub"],
                )
            )
            if default_known["seconds"] >= 0:
                notes.append(
                    f"default-limits broker: all {n} agents known after "
                    f"{default_known['seconds']:.3f} s"
                )
            else:
                notes.append(
                    f"default-limits broker (max_queued_messages 1000): the collector knew "
                    f"{default_known['agents']:.0f} of {n} agents after 10 s; a bare paho "
                    f"subscriber at QoS 0 got {default_known['paho']:.0f}, mosquitto_sub -q 0 "
                    f"{default_known['mosquitto_sub']}: Mosquitto drops retained QoS 0 "
                    "messages too when a reader drains them slower than it queues them, so "
                    "this needs max_queued_messages raised on the broker"
                )
    costs = per_report_costs()
    details += ["", "Cost per report of each layer, in process (no MQTT), µs:", ""]
    details += ["| layer | µs per report |", "|---|---|"]
    details += [f"| {name} | {us:.1f} |" for name, us in costs.items()]
    rest_us = 1e6 / live["collector"] - next(iter(costs.values()))
    details.append(
        f"| everything else per report in the live run (paho's packet handling, the loop, the "
        f"hook): 1/rate − FleetState.ingest | {rest_us:.1f} |"
    )
    profile: list[str] = []
    if any(r["verdict"] == "miss" and r["unit"] == "reports/s" for r in rows):
        profile = profile_live(m)
    fig = figure(
        KEY,
        "Collector ingest",
        command="",
        rows=rows,
        method=[
            "Mosquitto 2.0 with max_queued_messages raised (docs/decisions.md: otherwise a "
            "QoS 1 wildcard subscriber gets 1020 retained messages); the last row uses the "
            "default (1000)",
            "one valid, ~400-byte clock.report/1 per agent on its own retained topic, QoS 1, "
            "streamed by a raw pre-encoded MQTT publisher (a paho publisher tops out at "
            "11–13k/s, docs/decisions.md)",
            "collector: clockfleet.collector.ingest.Collector (subscribes at QoS 0) in its own "
            "process; its per-report hook times the first and last accepted report",
            "live rate = (reports − 1) / (last − first arrival), each consumer subscribed before "
            "the stream; backlog rate = reports / (consumer start → last report); "
            "mosquitto_sub -q 0 to a pipe, backlog timed from spawn to exit as in "
            "docs/decisions.md",
            "GET /metrics over HTTP from this process: the first request once every agent is "
            "known (the collector caches per-agent lines, so this is the cold one), then the "
            "median of 4 more; RSS of the collector process (psutil) after it knows the fleet",
        ],
        notes=notes,
        details=details,
    )
    fig["profile"] = profile
    return fig
