"""Figure 1: a new list is published -> every agent has reported it, as the collector sees it.

Three processes besides the daemons, so that nobody times itself: this one publishes (and
notes each PUBACK), a fleet worker runs N real agents on one selector loop, a collector
worker runs the real collector and notes when each agent's report of the new version came
in. CLOCK_MONOTONIC is one clock for all of them. The reference, in the same run and on the
same broker: N bare paho subscribers on one selector receiving the same retained update.

With jitter W the list asks agents to spread their resync over W seconds; a counting relay in
front of the NTP server records when each query arrives, to check that no second gets much
more than its share (about 2N/W at most).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from bench import profiling
from bench.listpub import ListPublisher
from bench.results import figure, row
from bench.stack import Bench, median, quantile
from bench.udpcount import CountingRelay, per_second

KEY = "convergence"
HELP = "new list -> every agent's report of it at the collector, vs bare paho subscribers"
REGION = "bench"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n",
        type=int,
        nargs="+",
        default=[100, 1000, 3000, 10000],
        help="fleet sizes (100 1000 3000 10000)",
    )
    p.add_argument(
        "--floor-n",
        type=int,
        nargs="*",
        default=[3000],
        help="fleet sizes at which the minimal-client floor runs too (3000)",
    )
    p.add_argument("--rounds", type=int, default=5, help="list updates per fleet size (5)")
    p.add_argument("--jitter-n", type=int, default=1000, help="fleet size of the jitter run")
    p.add_argument(
        "--jitter-w", type=int, default=10, help="resync_jitter_s of the jitter run (0: skip)"
    )
    p.add_argument(
        "--what-if-n",
        type=int,
        default=100,
        help="fleet size of the what-if run with the broker's Nagle off (0: skip)",
    )
    p.add_argument(
        "--fleet-workers",
        type=int,
        default=8,
        help="Fleet(workers=...) of the agents' process: threads for probes (default 8, "
        "the Fleet's own default)",
    )


def goal_for(n: int) -> float:
    return 1.0 if n <= 1000 else 3.0 if n <= 3000 else 4.0


def stats(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": quantile(latencies, 0.5),
        "p99": quantile(latencies, 0.99),
        "p100": max(latencies),
    }


def summarise(rounds: list[list[float]]) -> dict[str, float]:
    """Median over the rounds of each round's statistic (one slow round is noise)."""
    per = [stats(r) for r in rounds]
    return {k: median([p[k] for p in per]) for k in ("p50", "p99", "p100")} | {
        "worst_p100": max(p["p100"] for p in per)
    }


def one_round(
    collector: Any, pub: ListPublisher, version: int, n: int, server: list, jitter_s: int = 0
) -> tuple[float, list[float]]:
    """Publish list `version` and wait until the collector has every one of n agents' reports
    of it: the PUBACK time and each report's time after it."""
    collector.send({"cmd": "watch", "version": version, "n": n})
    collector.expect("ok", 10)
    t_ack = pub.publish_list(REGION, version, server, resync_jitter_s=jitter_s)
    ev = collector.expect("converged", jitter_s + 60 + n / 50)
    return t_ack, [t - t_ack for t in ev["times"]]


def measure(
    n: int,
    rounds: int,
    jitter_w: int | None,
    workers: int,
    details: list[str],
    profile_to: Path | None = None,
    nodelay: bool = False,
    floor: bool = False,
) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n}
    with Bench(f"conv{n}") as b:
        mosq = b.mosquitto(nodelay=nodelay)
        chrony = b.chronyd()
        server = [(chrony.host, chrony.port)]
        pub = ListPublisher(mosq.host, mosq.port, b.subdir("keys"))
        b.callback(pub.close)
        version = 1
        pub.publish_list(REGION, version, server, resync_jitter_s=0)

        collector = b.worker("bench.collector_worker", "--host", mosq.host, "--port", mosq.port)
        collector.expect("ready", 30)
        fleet = b.worker(
            "bench.fleet_worker",
            *("--host", mosq.host, "--port", mosq.port, "--n", n),
            *("--region", REGION, "--trust", pub.pub_path, "--workers", workers),
            profile_to=profile_to,
        )
        up = fleet.expect("ready", 240)
        out["fleet_up_s"] = up["seconds"]
        out["fleet_rss_mb"] = up["rss"] / 2**20
        out["fleet_kb_per_agent"] = (up["rss"] - up["rss_before"]) / n / 1024
        ours: list[list[float]] = []
        made: list[list[float]] = []
        for _ in range(rounds):
            version += 1
            t_ack, latencies = one_round(collector, pub, version, n, server)
            ours.append(latencies)
            fleet.send({"cmd": "made", "version": version})
            made.append([t - t_ack for t in fleet.expect("made", 10)["times"]])
        out["ours"] = summarise(ours)
        out["made"] = summarise(made)

        if jitter_w:
            relay = CountingRelay(chrony.host, (chrony.host, chrony.port))
            b.callback(relay.close)
            version += 1
            t_ack, latencies = one_round(collector, pub, version, n, [relay.address], jitter_w)
            queries = [t for t in relay.queries if t >= t_ack]
            buckets = per_second(queries, t_ack)
            out["jitter"] = {
                "w": jitter_w,
                "p100": max(latencies),
                "queries": len(queries),
                "packets": len([t for t in relay.packets if t >= t_ack]),
                "max_per_s": max(buckets) if buckets else 0,
                "buckets": buckets,
                "spread_s": (max(queries) - min(queries)) if queries else 0.0,
            }
        fleet.stop()
        if floor:
            minimal = b.worker(
                "bench.ref_minimal",
                *("--host", mosq.host, "--port", mosq.port, "--n", n),
                *("--region", REGION, "--trust", pub.pub_path, "--initial", version),
            )
            minimal.expect("ready", 240)
            floors: list[list[float]] = []
            for _ in range(rounds):
                version += 1
                floors.append(one_round(collector, pub, version, n, server)[1])
            minimal.stop()
            out["floor"] = summarise(floors)
        collector.stop()

        reference = b.worker(
            "bench.ref_subscribers",
            *("--host", mosq.host, "--port", mosq.port, "--n", n),
            *("--topic", f"clock/v1/regions/{REGION}/servers", "--initial", version),
        )
        ready = reference.expect("ready", 120)
        out["ref_up_s"] = ready["seconds"]
        refs: list[list[float]] = []
        for _ in range(rounds):
            version += 1
            t_ack = pub.publish_list(REGION, version, server, resync_jitter_s=0)
            ev = reference.expect("round", 60)
            refs.append([t - t_ack for t in ev["times"]])
        out["reference"] = summarise(refs)
    o, r, a = out["ours"], out["reference"], out["made"]
    details.append(
        f"| {n} | {o['p50']:.3f} / {o['p99']:.3f} / {o['p100']:.3f} (worst round "
        f"{o['worst_p100']:.3f}) | {a['p50']:.3f} / {a['p100']:.3f} "
        f"| {r['p50']:.4f} / {r['p99']:.4f} / {r['p100']:.4f} | "
        f"{out['fleet_up_s']:.1f} s, {out['fleet_rss_mb']:.0f} MB "
        f"({out['fleet_kb_per_agent']:.0f} KB/agent) | {out['ref_up_s']:.2f} s |"
    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    details = [
        "Per fleet size (seconds from PUBACK; median over rounds of each round's statistic):",
        "",
        "| N | ours p50 / p99 / p100 (at the collector) | of which the agents' side: report "
        "made, p50 / p100 | bare subscribers p50 / p99 / p100 | fleet start-up "
        "(connect + first sync of all), RSS | subscribers start-up |",
        "|---|---|---|---|---|---|",
    ]
    sizes = list(args.n)
    jitter_n = args.jitter_n if args.jitter_w else None
    if jitter_n is not None and jitter_n not in sizes:
        sizes.append(jitter_n)
    jitter = None
    for n in sizes:
        rounds = args.rounds if n in args.n else 0
        jw = args.jitter_w if n == jitter_n else None
        floor = n in (args.floor_n or [])
        res = measure(n, max(rounds, 1), jw, args.fleet_workers, details, floor=floor)
        if "jitter" in res:
            jitter = res["jitter"] | {"n": n}
        if n not in args.n:
            continue
        o, r = res["ours"], res["reference"]
        rows.append(
            row(
                f"p100, N={n}, jitter 0",
                "s",
                o["p100"],
                goal=goal_for(n),
                reference=f"{n} bare paho subscribers",
                reference_value=r["p100"],
            )
        )
        if "floor" in res:
            f = res["floor"]["p100"]
            rows.append(
                row(
                    f"p100, N={n}, against the minimal-client floor",
                    "s",
                    o["p100"],
                    goal=2 * f,
                    reference=f"{n} minimal clients (verify, 4-sample NTP, report; one selector)",
                    reference_value=f,
                )
            )
        for q in ("p50", "p99"):
            rows.append(
                row(
                    f"{q}, N={n}",
                    "s",
                    o[q],
                    reference=f"{n} bare paho subscribers",
                    reference_value=r[q],
                )
            )
    if jitter is not None:
        n, w = jitter["n"], jitter["w"]
        bound = 2 * n / w
        rows.append(
            row(
                f"most NTP queries in one second, N={n}, resync_jitter_s {w}",
                "queries/s",
                float(jitter["max_per_s"]),
                goal=bound,
                reference="even spread N/W",
                reference_value=n / w,
            )
        )
        rows.append(
            row(
                f"p100 with jitter {w} s, N={n} (expected about {w} s)",
                "s",
                jitter["p100"],
            )
        )
        notes.append(
            f"jitter run: {jitter['queries']} queries ({jitter['packets']} packets, the probe's "
            f"sample burst) spread over {jitter['spread_s']:.1f} s; queries per second from the "
            f"PUBACK: {jitter['buckets']}"
        )
    if args.what_if_n:
        n = args.what_if_n
        res = measure(n, args.rounds, None, args.fleet_workers, [], nodelay=True)
        rows.append(
            row(
                f"what-if: p100, N={n}, broker with set_tcp_nodelay true",
                "s",
                res["ours"]["p100"],
                reference=f"{n} bare paho subscribers, same broker",
                reference_value=res["reference"]["p100"],
            )
        )
        notes.append(
            "what-if run: the same with Mosquitto's `set_tcp_nodelay true` (broker/mosquitto.conf "
            "does not set it; Mosquitto's default leaves Nagle on, so a small packet to an agent "
            "or to the collector can wait for a delayed ACK, ~40 ms)"
        )
    profile: list[str] = []
    missed = [r for r in rows if r["verdict"] == "miss" and r["unit"] == "s"]
    if missed:
        n = max(s for s in args.n if f"N={s}," in missed[0]["measure"])
        with tempfile.TemporaryDirectory(prefix="cfb-prof-") as d:
            out = Path(d) / "fleet.txt"
            measure(n, 2, None, args.fleet_workers, [], profile_to=out)
            profile = [f"The agents' process at N={n} (start-up and 2 list updates):", ""]
            profile += profiling.summary(out, top=20)
    fig = figure(
        KEY,
        "Convergence",
        command="",
        rows=rows,
        method=[
            "a fresh Mosquitto 2.0 (persistence off, max_queued_messages raised) and one chronyd "
            "(-x) per fleet size; the bench publishes a signed, retained QoS 1 list and notes "
            "its PUBACK (CLOCK_MONOTONIC) with its own small publisher (bench/listpub.py: the "
            "protocol's message types and signing, as `clockfleet publish` sends them), since "
            "the figure starts at the PUBACK; `clockfleet publish`'s own run time is not a "
            "figure of docs/decisions.md and is not measured",
            "ours: N real Agent objects (observe backend, trust key, no start-up delay) on one "
            "agent.fleet.Fleet selector loop in one process; the real collector (in-process "
            "API, per-report hook) in another; per agent: the hook's time of its first report "
            "of the new version minus the PUBACK",
            "reference: N bare paho clients on one selector in one process subscribed to the "
            "same list topic at QoS 1, doing json.loads; per client: receive time minus PUBACK "
            "(negative when a subscriber had the list before the publisher had its PUBACK: "
            "Mosquitto writes to the subscribers first)",
            "floor (at the --floor-n sizes): N minimal clients on one selector in one process "
            "(bench/ref_minimal.py) that, on the new list, check its signature with PyNaCl, make "
            "the same four-sample NTP exchange with its first server (non-blocking, on the same "
            "selector, so that the clients' exchanges overlap as our agents' do) and publish a "
            "retained QoS 1 report; timed at the same collector as ours: the least work an agent "
            "can do; the goal is at most twice it",
            "jitter: the list names a counting UDP relay in front of the same chronyd and sets "
            "resync_jitter_s W; the relay notes each query's arrival (first packet from a new "
            "client socket), counted per whole second from the PUBACK",
        ],
        notes=notes,
        details=details,
    )
    fig["profile"] = profile
    return fig
