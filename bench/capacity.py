"""Capacity measurements for docs/capacity.md: connections, broker memory per connection and
the fan-out time of one list change, on one Mosquitto and on the 3-node NATS cluster.

    python -m bench.capacity [--n 1000 3000 10000] [--brokers mosquitto nats] [--out FILE]

Each connection does what an agent does to the broker, without the NTP side: a persistent
session (clean_session false), a QoS 1 subscription to its region's list, a retained QoS 1
status and a retained QoS 1 report of agent size (~700 bytes) under its own id. Clients run
in 3 worker processes of paho clients on one selector each (one worker per NATS node, every
client on that node; on Mosquitto all three on the one broker). Measured per size:

- connections held (the broker's own count: /connz on NATS, open file descriptors on
  Mosquitto) and the time to connect, subscribe and publish them all;
- broker RSS once all are up, minus its RSS idle with the list retained, per connection
  (NATS: the three nodes summed);
- fan-out: a new list version published (QoS 1, retained) -> received by every client
  (p50 / p100 from the instant the list is handed to the socket, CLOCK_MONOTONIC across
  processes).

Writes a JSON file (default /tmp/capacity.json) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.stack import Bench, emit, quantile, raise_nofile

REGION = "cap"
WORKERS = 3
BENCH_OPEN_WHY = "benchmark: open like its Mosquitto (workers have no identities)"
REPORT = {
    "schema": "clock.report/1",
    "region": REGION,
    "list_version": 1,
    "ok": True,
    "server": {"host": "127.0.0.2", "port": 123},
    "offset_s": 0.000012,
    "delay_s": 0.000041,
    "stratum": 8,
    "leap": 0,
    "discipline": "observe",
    "timezone": "UTC",
    "at": "2026-11-30T00:00:00.000Z",
    "tried": [
        {"host": "ntp1.example.net", "port": 123, "outcome": "timeout", "detail": "no answer"},
        {"host": "127.0.0.2", "port": 123, "outcome": "ok"},
    ],
}


# --- worker: N clients on one selector ----------------------------------------------------


def worker(argv: list[str]) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from bench.selectorloop import SelectorLoop

    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--first", type=int, required=True)
    p.add_argument("--initial", type=int, required=True)
    args = p.parse_args(argv)
    raise_nofile()
    loop = SelectorLoop()
    topic = f"clock/v1/regions/{REGION}/servers"
    n = args.n
    have = [-1] * n
    acked = [0] * n
    at: dict[int, list[float | None]] = {}
    stopped = False

    def on_connect(client, i, flags, rc, props) -> None:
        if rc.is_failure:
            return
        client.subscribe(topic, qos=1)
        aid = f"cap-{args.first + i}"
        body = dict(REPORT, agent=aid)
        status = {"schema": "clock.status/1", "agent": aid, "state": "online", "session": 1}
        client.publish(f"clock/v1/agents/{aid}/status", json.dumps(status), qos=1, retain=True)
        client.publish(f"clock/v1/agents/{aid}/report", json.dumps(body), qos=1, retain=True)

    def on_publish(client, i, mid, rc, props) -> None:
        acked[i] += 1

    def on_message(client, i, msg) -> None:
        now = time.monotonic()
        if not msg.payload:
            return
        version = json.loads(msg.payload)["version"]
        have[i] = max(have[i], version)
        at.setdefault(version, [None] * n)[i] = now

    def on_stdin() -> None:
        nonlocal stopped
        line = sys.stdin.readline()
        if not line or json.loads(line).get("cmd") == "stop":
            stopped = True

    t0 = time.monotonic()
    clients = []
    for i in range(n):
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"cap-{args.first + i}",
            clean_session=False,
            userdata=i,
        )
        c.on_connect = on_connect
        c.on_message = on_message
        c.on_publish = on_publish
        c.max_inflight_messages_set(20)
        loop.add(c)
        c.connect("127.0.0.1", args.port, keepalive=300)
        clients.append(c)
        if i % 50 == 49:
            loop.pump(0)
    loop.watch(sys.stdin, on_stdin)
    deadline = time.monotonic() + 900
    while (min(have) < args.initial or min(acked) < 2) and not stopped:
        loop.pump(0.05)
        if time.monotonic() > deadline:
            emit("error", why=f"{sum(h >= args.initial for h in have)} of {n} got the list")
            return 1
    emit("ready", seconds=time.monotonic() - t0, clients=n)
    reported = {args.initial}
    while not stopped:
        loop.pump(0.05)
        for version, times in list(at.items()):
            if version not in reported and all(t is not None for t in times):
                reported.add(version)
                emit("round", version=version, times=times)
    for c in clients:
        c.disconnect()
        c.loop_write()
    return 0


# --- orchestrator ------------------------------------------------------------------------


def _rss(pids: list[int]) -> int:
    return sum(psutil.Process(p).memory_info().rss for p in pids)


def _fds(pids: list[int]) -> int:
    return sum(psutil.Process(p).num_fds() for p in pids)


def measure(kind: str, n: int, rounds: int) -> dict[str, Any]:
    from bench.listpub import ListPublisher

    out: dict[str, Any] = {"broker": kind, "n": n}
    with Bench(f"cap-{kind}{n}") as b:
        if kind == "nats":
            from clockfleet.devstack.nats import start_cluster

            # Open, as the benchmark's Mosquitto is: the workers' clients have no identities.
            cluster = start_cluster(b.subdir("nats"), open_why=BENCH_OPEN_WHY)
            b.callback(cluster.stop)
            ports = [node.mqtt_port for node in cluster.nodes]
            pids = [node.daemon.proc.pid for node in cluster.nodes]  # type: ignore[union-attr]
        else:
            mosq = b.mosquitto()
            ports = [mosq.port] * WORKERS
            pids = [mosq.proc.pid]
            cluster = None
        pub = ListPublisher("127.0.0.1", ports[0], b.subdir("keys"))
        b.callback(pub.close)
        version = 1
        pub.publish_list(REGION, version, [("127.0.0.2", 123)])
        time.sleep(1.0)
        rss_idle = _rss(pids)
        fds_idle = _fds(pids)
        share = [n // WORKERS + (1 if i < n % WORKERS else 0) for i in range(WORKERS)]
        workers = []
        first = 0
        t0 = time.monotonic()
        for i, count in enumerate(share):
            w = b.worker(
                "bench.capacity",
                *("worker", "--port", ports[i], "--n", count),
                *("--first", first, "--initial", version),
            )
            workers.append(w)
            first += count
        for w in workers:
            w.expect("ready", 900)
        out["connect_all_s"] = time.monotonic() - t0
        time.sleep(2.0)
        out["rss_idle_mb"] = rss_idle / 2**20
        out["rss_mb"] = _rss(pids) / 2**20
        out["kb_per_conn"] = (_rss(pids) - rss_idle) / n / 1024
        if cluster is not None:
            out["connections"] = sum(
                node.monitor("/connz?limit=1")["total"] for node in cluster.nodes
            )
        else:
            out["connections"] = _fds(pids) - fds_idle
        p50s, p100s = [], []
        for _ in range(rounds):
            version += 1
            t_ack = pub.publish_list(REGION, version, [("127.0.0.2", 123)])
            times: list[float] = []
            for w in workers:
                times += w.expect("round", 120 + n / 100)["times"]
            lat = [t - t_ack for t in times]
            p50s.append(quantile(lat, 0.5))
            p100s.append(max(lat))
        out["fanout_p50_s"] = statistics.median(p50s)
        out["fanout_p100_s"] = statistics.median(p100s)
        out["fanout_worst_p100_s"] = max(p100s)
        for w in workers:
            w.stop()
    return out


def main(argv: list[str]) -> int:
    if argv and argv[0] == "worker":
        return worker(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench.capacity")
    p.add_argument("--n", type=int, nargs="+", default=[1000, 3000, 10000])
    p.add_argument("--brokers", nargs="+", default=["mosquitto", "nats"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("/tmp/capacity.json"))
    args = p.parse_args(argv)
    raise_nofile()
    results = []
    for kind in args.brokers:
        for n in args.n:
            res = measure(kind, n, args.rounds)
            results.append(res)
            print(json.dumps(res), flush=True)
            args.out.write_text(json.dumps(results, indent=1))
    print(
        "| broker | N | connections | connect all (s) | RSS (MB) idle -> up | KB/conn "
        "| fan-out p50 / p100 (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['broker']} | {r['n']} | {r['connections']} | {r['connect_all_s']:.1f} "
            f"| {r['rss_idle_mb']:.0f} -> {r['rss_mb']:.0f} | {r['kb_per_conn']:.1f} "
            f"| {r['fanout_p50_s']:.3f} / {r['fanout_p100_s']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
