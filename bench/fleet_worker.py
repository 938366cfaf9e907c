"""N clockfleet agents in one process on one selector loop (worker for bench.stack.Worker).

Real `clockfleet.agent.service.Agent` objects hosted by `clockfleet.agent.fleet.Fleet`, each
with its own MQTT connection, the observe backend (measure and report, clock untouched), a
trust key (so every list's signature is checked) and no state directory. Emits `ready` once
every agent has made its first report (the fleet is up and synced), then serves `made`
{version} (when each agent made its report of that list version: the agents' side of the
convergence time), `agents` {ids} (what those agents are doing: a failed run's diagnosis),
`rss` and `stop`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import psutil

from bench.stack import commands, emit, raise_nofile

TIMES: dict[str, dict[str, float]] = {}  # agent -> when its last report was made, acked


def describe(agent) -> dict:
    """One agent's state, read from another thread: good enough for a diagnosis."""
    link = agent.link
    last = agent.last_report
    t = TIMES.get(agent.id, {})
    return {
        "id": agent.id,
        "list": agent.server_list.version if agent.server_list else None,
        "made": agent.reports_made,
        "acked": agent.reports_acked,
        "last_report_list": last.list_version if last else None,
        "link": str(link.state),
        "node": f"{link.client.host}:{link.client.port}",
        "in_flight": link.reports_in_flight,
        "ack_after_s": round(t["acked"] - t["made"], 3) if "acked" in t and "made" in t else None,
        "counters": dict(agent.counters),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--broker", help="a comma-separated node list (a cluster); instead of --host/--port"
    )
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--trust", type=Path, required=True)
    p.add_argument("--workers", type=int, default=8)
    args = p.parse_args()
    raise_nofile()
    from clockfleet.agent.backend_choice import make_backend
    from clockfleet.agent.fleet import Fleet
    from clockfleet.agent.service import Agent, AgentSettings
    from clockfleet.protocol import signing
    from clockfleet.protocol.connection import ConnectionSettings, parse_brokers

    me = psutil.Process()
    rss_before = me.memory_info().rss
    trust = signing.load_trust([args.trust])
    conn = ConnectionSettings(parse_brokers(args.broker or f"mqtt://{args.host}:{args.port}"))
    reported: set[str] = set()
    lock = threading.Lock()
    all_reported = threading.Event()

    made: dict[int, list[float]] = {}  # list version -> when each agent's report was made

    def on_report(agent, report) -> None:
        now = time.monotonic()
        TIMES.setdefault(agent.id, {})["made"] = now
        with lock:
            made.setdefault(report.list_version, []).append(now)
            reported.add(agent.id)
            if len(reported) == args.n:
                all_reported.set()

    t0 = time.monotonic()
    fleet = Fleet(workers=args.workers)
    for i in range(args.n):
        agent = Agent(
            AgentSettings(
                agent_id=f"bench-{i}",
                region=args.region,
                trust=trust,
                tz_root=None,
                startup_delay_s=0.0,
            ),
            conn,
            backend=make_backend("observe"),
        )
        agent.observers.on_report = on_report
        agent.observers.on_acked = lambda a=agent: TIMES.setdefault(a.id, {}).update(
            acked=time.monotonic()
        )
        fleet.add(agent)
    fleet.start()
    if not all_reported.wait(120):
        emit("error", why=f"only {len(reported)} of {args.n} agents reported within 120 s")
        return 1
    emit(
        "ready",
        seconds=time.monotonic() - t0,
        agents=args.n,
        rss=me.memory_info().rss,
        rss_before=rss_before,
        threads=me.num_threads(),
    )
    for cmd in commands():
        if cmd.get("cmd") == "stop":
            break
        if cmd.get("cmd") == "made":
            with lock:
                emit("made", times=list(made.get(cmd["version"], [])))
        if cmd.get("cmd") == "agents":  # what the named agents are doing (diagnosis)
            wanted = set(cmd["ids"])
            emit("agents", agents=[describe(a) for a in fleet.agents if a.id in wanted])
        if cmd.get("cmd") == "rss":
            emit("rss", rss=me.memory_info().rss, cpu=sum(me.cpu_times()[:2]))
    fleet.stop(timeout_s=10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
