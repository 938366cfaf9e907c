"""Figure: convergence through one data-centre edge bridge vs directly on central.

The convergence figure's machinery (bench/convergence.py's statistics, bench/stack.py's
daemons and workers, bench/fleet_worker.py, bench/collector_worker.py, bench/listpub.py), on
one central Mosquitto with one edge bridged to it using broker/bridges/make-bridges' bridge
block: the publisher and the collector on central; N agents first on central itself (direct),
then the same N on the edge (one bridge hop each way: the list in, the reports out). Same
central, same chronyd, same rounds.

Both brokers are open (anonymous) with the bench's settings, not the generated configs that
the tests run (devstack bridges.py): the workers log in without identities (one
ConnectionSettings for all N agents of a fleet worker), and the figure is the bridge hop's
latency, which needs the same broker settings in both layouts. Each start is recorded with
that reason.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.conv_measure import REGION, one_round, summarise
from bench.listpub import ListPublisher
from bench.results import figure, row
from bench.stack import BENCH_MOSQUITTO_CONF, Bench
from clockfleet.devstack import Daemon
from clockfleet.devstack.bridges import PREFIX, generator, watch_bridges
from clockfleet.devstack.mosquitto import launch, record
from clockfleet.protocol.connection import ConnectionSettings, parse_brokers

KEY = "bridges"
HELP = "new list -> every agent's report at the collector, N agents on one edge vs on central"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1000, help="fleet size (1000)")
    p.add_argument("--rounds", type=int, default=5, help="list updates per layout (5)")
    p.add_argument("--fleet-workers", type=int, default=8, help="Fleet(workers=...) (8)")


WHY_OPEN = (
    "bench: the fleet and collector workers log in without identities, and the bridge hop is "
    "timed against agents directly on central with the same (bench) broker settings"
)
MAX_QUEUED = 1_000_000


def start_broker(b: Bench, name: str, conf: str) -> Daemon:
    record("bridges", shipped=False, why=WHY_OPEN)
    d = launch(b.subdir(name), conf, values={"MAXQ": MAX_QUEUED})
    b.callback(d.stop)
    return d


def start_edge(b: Bench, central: Daemon) -> Daemon:
    """An edge with the bench's broker settings plus the generated bridge to central (plain:
    central here is the bench's open broker, which takes the bridge's login as it is)."""
    block = generator().bridge_block(
        "bench", f"{central.host}:{central.port}", "unused", prefix=PREFIX
    )
    edge = start_broker(b, "edge", BENCH_MOSQUITTO_CONF + block)
    # Anonymous clients may read $SYS on an open broker: the edge's own notification.
    on_edge = ConnectionSettings(parse_brokers(f"mqtt://{edge.host}:{edge.port}"))
    if watch_bridges(on_edge, lambda s: s.get("bench") == "1", 30).get("bench") != "1":
        raise RuntimeError(f"the bridge did not come up: {edge.log_tail()}")
    return edge


def rounds_on(
    b: Bench,
    broker: Daemon,
    central: Daemon,
    pub: ListPublisher,
    version: int,
    server: list[tuple[str, int]],
    args: argparse.Namespace,
) -> tuple[dict[str, Any], int, float]:
    """N agents on `broker`, the collector on central: args.rounds list updates, each timed
    as the convergence figure times one (one_round)."""
    collector = b.collector("--host", central.host, "--port", central.port)
    fleet, up = b.fleet(
        *("--host", broker.host, "--port", broker.port),
        n=args.n,
        region=REGION,
        trust=pub.pub_path,
        workers=args.fleet_workers,
        ready_s=240,
    )
    ours: list[list[float]] = []
    for _ in range(args.rounds):
        version += 1
        ours.append(one_round(collector, pub, version, args.n, server)[1])
    fleet.stop()
    collector.stop()
    return summarise(ours), version, up["seconds"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    with Bench(f"bridges{n}") as b:
        central = start_broker(b, "central", BENCH_MOSQUITTO_CONF)
        edge = start_edge(b, central)
        chrony = b.chronyd()
        server = [(chrony.host, chrony.port)]
        pub = ListPublisher(central.host, central.port, b.subdir("keys"))
        b.callback(pub.close)
        version = 1
        pub.publish_list(REGION, version, server, resync_jitter_s=0)
        direct, version, up_direct = rounds_on(b, central, central, pub, version, server, args)
        via_edge, version, up_edge = rounds_on(b, edge, central, pub, version, server, args)
    rows = [
        row(
            f"p100, N={n}, agents on an edge (one bridge hop each way)",
            "s",
            via_edge["p100"],
            goal=1.0 if n <= 1000 else 3.0,
            reference=f"the same {n} agents directly on central",
            reference_value=direct["p100"],
        ),
        row(
            f"p50, N={n}, agents on an edge",
            "s",
            via_edge["p50"],
            reference="directly on central",
            reference_value=direct["p50"],
        ),
        row(
            f"p99, N={n}, agents on an edge",
            "s",
            via_edge["p99"],
            reference="directly on central",
            reference_value=direct["p99"],
        ),
    ]
    details = [
        "Seconds from the list handed to the publisher's socket on central to each agent's "
        "report of it at the collector on central (median over rounds of each round's "
        "statistic):",
        "",
        "| layout | p50 | p99 | p100 | worst round p100 | fleet start-up |",
        "|---|---|---|---|---|---|",
        f"| direct on central | {direct['p50']:.3f} | {direct['p99']:.3f} | "
        f"{direct['p100']:.3f} | {direct['worst_p100']:.3f} | {up_direct:.1f} s |",
        f"| on an edge | {via_edge['p50']:.3f} | {via_edge['p99']:.3f} | "
        f"{via_edge['p100']:.3f} | {via_edge['worst_p100']:.3f} | {up_edge:.1f} s |",
    ]
    return figure(
        KEY,
        "Convergence through an edge bridge",
        command="",
        rows=rows,
        method=[
            "one central Mosquitto 2.0 (the bench's settings: persistence off, queue raised) "
            "and one edge with the same settings plus broker/bridges/make-bridges' bridge "
            "block (try_private, cleansession false, MQTT 3.1.1, lists/profiles/cmd in and "
            "reports/status out at QoS 1); one chronyd",
            "the publisher (bench/listpub.py) and the real collector (bench/collector_worker.py) "
            "on central; N real agents (bench/fleet_worker.py, one selector loop) first on "
            "central, then on the edge; per agent: its report of the new version at the "
            "collector minus the instant the list was handed to the socket, rounds paced past "
            "the collector's per-topic rate limit: the convergence figure's one_round",
        ],
        notes=[],
        details=details,
    )
