"""Figure: the fleet on a 3-node NATS cluster (JetStream-backed MQTT), beside one Mosquitto.

Two measures, each with its reference in the same run:

- convergence: a new list published -> every agent of N has reported it, as the collector
  sees it (p100 from the list handed to the socket), on the NATS cluster (every client
  given all three nodes, rotating) and on one Mosquitto: the same workers as the convergence figure
  (bench/fleet_worker.py, bench/collector_worker.py, bench/listpub.py), only the broker
  differs;
- failover: with the collector on the node most agents use, a list change is published
  (resync jitter 2 s, so reports are still flowing) and that node is SIGKILLed 0.5 s after
  the list was sent. Measured: from the kill until the collector holds every agent's report of the
  new list. Reference: when the surviving nodes accept a QoS 1 PUBLISH again (a bare paho
  client on a surviving node publishing every 0.1 s: the cluster's own recovery, mostly
  the election of new stream leaders). Then the killed node is restarted: how long until it
  is healthy and serves MQTT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.convergence import one_round, summarise
from bench.listpub import ListPublisher
from bench.results import figure, row
from bench.stack import Bench, Worker

KEY = "scaleout"
HELP = "NATS 3-node cluster: convergence p100 beside Mosquitto, all back after a node SIGKILL"
REGION = "bench"
KILL_AFTER_S = 0.5
FAILOVER_JITTER_S = 2
BENCH_OPEN_WHY = "benchmark: open like its Mosquitto (workers have no identities)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1000, help="fleet size (1000)")
    p.add_argument("--rounds", type=int, default=3, help="list updates per broker (3)")
    p.add_argument(
        "--fleet-workers", type=int, default=8, help="Fleet(workers=...) of the agents' process"
    )


class PublishProbe:
    """A bare QoS 1 publisher on one node: when does the cluster accept a PUBLISH again?"""

    def __init__(self, host: str, port: int) -> None:
        self.acks: list[float] = []
        self._stop = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publish-probe")
        self.client.on_publish = lambda c, ud, mid, rc, p: self.acks.append(time.monotonic())
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.client.publish("clock/v1/bench-probe", b"x", qos=1)

    def first_ack_after(self, t: float) -> float | None:
        later = [a for a in list(self.acks) if a > t]
        return min(later) if later else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


def _stream_leaders(cluster: Any) -> dict[str, str]:
    """Each $MQTT stream's leader, from the first live node's /jsz."""
    for node in cluster.nodes:
        if not node.alive():
            continue
        with contextlib.suppress(OSError, ValueError, KeyError):
            jsz = node.monitor("/jsz?streams=true")
            out = {}
            for acc in jsz.get("account_details") or []:
                for s in acc.get("stream_detail") or []:
                    out[s["name"]] = (s.get("cluster") or {}).get("leader", "?")
            return out
    return {}


def measure(kind: str, n: int, rounds: int, workers: int, failover: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "n": n}
    with Bench(f"scale-{kind}{n}") as b:
        cluster = None
        if kind == "nats":
            from clockfleet.devstack.nats import start_cluster

            t0 = time.monotonic()
            # Open, as the benchmark's Mosquitto is: its fleet worker, list publisher and
            # collector worker connect without identities (the shipped config's CONNECT costs
            # a bcrypt check each: broker/nats/README.md).
            cluster = start_cluster(b.subdir("nats"), open_why=BENCH_OPEN_WHY)
            b.callback(cluster.stop)
            out["cluster_up_s"] = time.monotonic() - t0
            urls = cluster.urls
            pub_at = (cluster.nodes[0].mqtt_port, 0)
        else:
            mosq = b.mosquitto()
            urls = f"mqtt://{mosq.host}:{mosq.port}"
            pub_at = (mosq.port, None)
        chrony = b.chronyd()
        server = [(chrony.host, chrony.port)]
        pub = ListPublisher("127.0.0.1", pub_at[0], b.subdir("keys"))
        b.callback(pub.close)
        version = 1
        pub.publish_list(REGION, version, server, resync_jitter_s=0)
        collector = b.collector("--broker", urls, ready_s=60)
        fleet, up = b.fleet(
            *("--broker", urls),
            n=n,
            region=REGION,
            trust=pub.pub_path,
            workers=workers,
            ready_s=600,
        )
        out["fleet_up_s"] = up["seconds"]
        ours: list[list[float]] = []
        for _ in range(rounds):
            version += 1
            ours.append(one_round(collector, pub, version, n, server)[1])
        out["ours"] = summarise(ours)
        if failover and cluster is not None:
            out["failover"] = _failover(b, cluster, pub, collector, fleet, urls, n, version, server)
        fleet.stop()
    return out


def _failover(
    b: Bench,
    cluster: Any,
    pub: ListPublisher,
    collector: Worker,
    fleet: Worker,
    urls: str,
    n: int,
    version: int,
    server: list[tuple[str, int]],
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    agents = {f"clockfleet-agent-bench-{i}" for i in range(n)}
    target, on_target = cluster.busiest(agents)
    # The collector on that node too: restart it until its random rotation lands there.
    for _ in range(20):
        where = [
            i
            for i, ids in cluster.clients_by_node().items()
            if any(c.startswith("clockfleet-collector-") for c in ids)
        ]
        if where == [target]:
            break
        collector.stop()
        collector = b.collector("--broker", urls, ready_s=60)
    else:
        raise RuntimeError(f"the collector never landed on node {target}")
    b.callback(collector.stop)
    res["agents_on_killed"] = on_target
    res["agents_per_node"] = {
        i: len(agents.intersection(ids)) for i, ids in cluster.clients_by_node().items()
    }
    # The bench's publisher and the probe sit on surviving nodes.
    survivors = [node for node in cluster.nodes if node.index != target]
    if pub.client.port == cluster.nodes[target].mqtt_port:
        pub.client.disconnect()
        pub.client.loop_stop()
        pub.client.connect("127.0.0.1", survivors[0].mqtt_port)
        pub.client.loop_start()
        time.sleep(0.5)
    probe = PublishProbe("127.0.0.1", survivors[-1].mqtt_port)
    b.callback(probe.close)
    time.sleep(0.5)
    leaders = _stream_leaders(cluster)
    killed_name = cluster.nodes[target].name
    res["streams_led_by_killed"] = sorted(s for s, who in leaders.items() if who == killed_name)
    version += 1
    collector.send({"cmd": "watch", "version": version, "n": n})
    collector.expect("ok", 10)
    t_sent = pub.publish_list(REGION, version, server, resync_jitter_s=FAILOVER_JITTER_S)
    time.sleep(max(0.0, t_sent + KILL_AFTER_S - time.monotonic()))
    t_kill = cluster.kill(target)
    try:
        ev = collector.expect("converged", 120)
    except TimeoutError as exc:
        why = _diagnosis(collector, fleet, n) + "\n" + _retained_views(cluster, target, version)
        raise TimeoutError(f"{exc}\n{why}") from None
    res["all_back_s"] = max(ev["times"]) - t_kill
    res["before_kill"] = sum(1 for t in ev["times"] if t < t_kill)
    first = probe.first_ack_after(t_kill + 0.01)
    res["publish_again_s"] = None if first is None else first - t_kill
    t0 = time.monotonic()
    cluster.restart(target)
    res["rejoin_s"] = time.monotonic() - t0
    res["leaders_after"] = _stream_leaders(cluster)
    return res


def _diagnosis(collector: Worker, fleet: Worker, n: int) -> str:
    """Which agents' reports never came, and what those agents say they did."""
    collector.send({"cmd": "seen"})
    answer = collector.expect("seen", 10)
    seen = set(answer["agents"])
    missing = sorted({f"bench-{i}" for i in range(n)} - seen)
    fleet.send({"cmd": "agents", "ids": missing[:20]})
    states = fleet.expect("agents", 10)["agents"]
    fleet.send({"cmd": "agents", "ids": sorted(seen)[:20]})
    arrived = [a["ack_after_s"] for a in fleet.expect("agents", 10)["agents"]]
    lines = [
        f"collector connected {answer['connected']} to {answer['broker']}, knows "
        f"{answer['known']} agents; {len(missing)} of {n} agents' reports missing there:"
    ]
    lines += [json.dumps(a, sort_keys=True) for a in states]
    lines.append(f"for comparison, report-to-PUBACK of agents whose report arrived: {arrived}")
    return "\n".join(lines)


def _retained_views(cluster: Any, killed: int, version: int) -> str:
    """What a fresh wildcard subscriber on each surviving node gets: retained reports of
    `version` (is the cluster's retained store behind what it acknowledged?)."""
    lines = []
    for node in cluster.nodes:
        if node.index == killed:
            continue
        got: dict[str, int] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-view-{node.index}")

        def on_message(c, ud, msg, got=got) -> None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                got[msg.topic] = json.loads(msg.payload)["list_version"]

        c.on_message = on_message
        c.on_connect = lambda c, ud, f, rc, p: c.subscribe("clock/v1/agents/+/report", qos=1)
        c.connect("127.0.0.1", node.mqtt_port, keepalive=10)
        c.loop_start()
        time.sleep(3.0)
        c.disconnect()
        c.loop_stop()
        new = sum(1 for v in got.values() if v >= version)
        lines.append(f"node {node.index}: {len(got)} retained reports, {new} of version {version}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    nats = measure("nats", n, args.rounds, args.fleet_workers, failover=True)
    mosq = measure("mosquitto", n, args.rounds, args.fleet_workers, failover=False)
    o, m = nats["ours"], mosq["ours"]
    fo = nats["failover"]
    rows = [
        row(
            f"convergence p100, N={n}, NATS 3-node cluster",
            "s",
            o["p100"],
            goal=2.0,
            reference=f"the same {n} agents on one Mosquitto",
            reference_value=m["p100"],
        ),
        row(
            f"convergence p50, N={n}, NATS 3-node cluster",
            "s",
            o["p50"],
            reference=f"the same {n} agents on one Mosquitto",
            reference_value=m["p50"],
        ),
        row(
            f"all agents' reports of the new list at the collector after a node SIGKILL, N={n}",
            "s",
            fo["all_back_s"],
            goal=15.0,
            reference="surviving nodes accept a QoS 1 PUBLISH again (bare paho client)",
            reference_value=fo["publish_again_s"],
        ),
        row("killed node restarted: healthy and serving MQTT", "s", fo["rejoin_s"]),
    ]
    notes = [
        f"killed node held {fo['agents_on_killed']} of {n} agents and the collector "
        f"(agents per node before the kill: {fo['agents_per_node']}); it led "
        f"{', '.join(fo['streams_led_by_killed']) or 'no $MQTT stream'}; "
        f"{fo['before_kill']} of {n} reports of the change were in before the kill",
        f"worst round p100: NATS {o['worst_p100']:.3f} s, Mosquitto {m['worst_p100']:.3f} s; "
        f"fleet start-up (connect + first sync of all {n}): NATS {nats['fleet_up_s']:.1f} s, "
        f"Mosquitto {mosq['fleet_up_s']:.1f} s; cluster start-up {nats['cluster_up_s']:.1f} s",
    ]
    return figure(
        KEY,
        "Scale-out: NATS 3-node cluster",
        command="",
        rows=rows,
        method=[
            "NATS 2.9 (Debian nats-server), 3 nodes on loopback rendered from "
            "broker/nats/node.conf.template (stream_replicas 3, consumer_replicas 1 in memory) "
            "by devstack/clockfleet/devstack/nats.py, open (the workers have no identities); "
            "every client (agents, collector) given all three "
            "nodes and rotating; Mosquitto 2.0 as in the convergence figure",
            "convergence: the convergence figure's workers (N real agents on one Fleet loop, "
            "the real collector in its own process, the bench publisher noting when it hands "
            "the list to its socket); "
            "median over the rounds of each round's p100 / p50",
            f"failover: the collector restarted until it sits on the node most agents use; the "
            f"list is published with resync_jitter_s {FAILOVER_JITTER_S} and that node "
            f"SIGKILLed {KILL_AFTER_S} s after the list was sent; figure: kill -> the collector's "
            "last first-report of the new version; reference: kill -> first PUBACK of a bare "
            "QoS 1 publisher (every 0.1 s) on a surviving node",
        ],
        notes=notes,
        details=[],
    )
