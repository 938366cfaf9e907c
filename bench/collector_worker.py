"""The collector under test, in a process of its own (worker for bench.stack.Worker).

It runs clockfleet's in-process collector API (`clockfleet.collector.ingest.Collector`) with
its per-report hook and serves /metrics the way `clockfleet collector` does, and tells the
orchestrator, as JSON lines, when the reports it is waiting for have arrived. The hook's
times are CLOCK_MONOTONIC, one clock with the publisher's send instants (listpub.START_RULE).

Commands (stdin): `watch` {version, n} -> `converged` once n agents reported list_version
>= version, with each agent's first such time; `count` {n} -> `counted` once n reports more
have been accepted, with the first and last time; `seen` -> `seen` (the agents whose report
of the watched version is in); `rss` -> `rss`; `stop`.
With --expect N it emits `known` once N distinct agents have a report, timed from before
the collector was created (a restart in front of a retained fleet).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import psutil

from bench.stack import commands, emit, raise_nofile


class Tracker:
    """Runs in the collector's MQTT thread (the hook); keep it cheap."""

    def __init__(self, expect: int | None, t_start: float) -> None:
        self.lock = threading.Lock()
        self.expect = expect
        self.t_start = t_start
        self.known: set[str] = set()
        self.watch_version: int | None = None
        self.watch_n = 0
        self.watched: dict[str, float] = {}
        self.count_target: int | None = None
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def on_report(self, agent: str, report, t: float) -> None:
        with self.lock:
            if self.expect is not None and agent not in self.known:
                self.known.add(agent)
                if len(self.known) == self.expect:
                    emit("known", agents=self.expect, t_start=self.t_start, t_all=t)
            if self.count_target is not None:
                if self.count == 0:
                    self.first = t
                self.count += 1
                self.last = t
                if self.count == self.count_target:
                    emit("counted", count=self.count, first=self.first, last=self.last)
                    self.count_target = None
            v = self.watch_version
            if v is not None and report.list_version >= v and agent not in self.watched:
                self.watched[agent] = t
                if len(self.watched) == self.watch_n:
                    emit("converged", version=v, times=list(self.watched.values()))
                    self.watch_version = None


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--broker", help="a comma-separated node list (a cluster); instead of --host/--port"
    )
    p.add_argument("--expect", type=int, default=None)
    args = p.parse_args()
    raise_nofile()
    from clockfleet.collector.http import serve
    from clockfleet.collector.ingest import Collector
    from clockfleet.collector.metrics import MetricsRenderer
    from clockfleet.protocol.connection import ConnectionSettings, parse_brokers

    t_start = time.monotonic()
    tracker = Tracker(args.expect, t_start)
    settings = ConnectionSettings(parse_brokers(args.broker or f"mqtt://{args.host}:{args.port}"))
    collector = Collector(settings, on_report=tracker.on_report)
    collector.start()
    # what `clockfleet collector` serves: one renderer, its per-agent text cached
    server, _ = serve("127.0.0.1", 0, MetricsRenderer(collector.state, collector.link).render)
    deadline = time.monotonic() + 10
    while not collector.connected and time.monotonic() < deadline:
        time.sleep(0.005)  # subscribed: from here on no report is missed
    emit("ready", metrics_port=server.server_port, subscribed=collector.connected)
    me = psutil.Process()
    for cmd in commands():
        name = cmd.get("cmd")
        if name == "stop":
            break
        with tracker.lock:
            if name == "watch":
                tracker.watched = {}
                tracker.watch_n = cmd["n"]
                tracker.watch_version = cmd["version"]
            elif name == "count":
                tracker.count = 0
                tracker.count_target = cmd["n"]
        if name == "seen":  # which agents' reports of the watched version are in (diagnosis)
            with tracker.lock:
                emit(
                    "seen",
                    agents=sorted(tracker.watched),
                    connected=collector.connected,
                    broker=str(collector.current_broker),
                    known=len(collector.state.agents),
                )
        elif name == "rss":
            emit(
                "rss",
                rss=me.memory_info().rss,
                agents=len(collector.state.agents),
                cpu=sum(me.cpu_times()[:2]),
            )
        else:
            emit("ok", cmd=name)
    server.shutdown()
    collector.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
