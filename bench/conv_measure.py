"""The convergence figure's measuring: one fleet size's rounds, ours beside the floor (and the
bare subscribers), every latency from the list's hand-over to the publisher's socket
(bench/listpub.py, START_RULE). The figure itself, its rows and its text: bench/convergence.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from bench.listpub import ListPublisher
from bench.results import check_latencies
from bench.stack import Bench, median, quantile
from bench.udpcount import CountingRelay, per_second
from clockfleet.collector.ratelimit import DEFAULT_RATE_LIMIT

REGION = "bench"
# Our p100 at most this many times the minimal-client floor's p100, same run, every N.
GOAL_RATIO = 1.5
PROFILE_ROUNDS = 3
# Rounds at least this far apart: the collector (as shipped) lets each agent's report topic
# through at DEFAULT_RATE_LIMIT.per_s sustained (1 a second, bursts of 5) and holds a faster
# topic's newest message until it has a token again. Rounds back to back exhausted the burst
# and a round then measured the limiter (reports held up to 1 s), not the convergence.
ROUND_GAP_S = 1.0 / DEFAULT_RATE_LIMIT.per_s + 0.2


def stats(latencies: list[float]) -> dict[str, float]:
    return {
        "p50": quantile(latencies, 0.5),
        "p99": quantile(latencies, 0.99),
        "p100": max(latencies),
    }


def summarise(rounds: list[list[float]], what: str = "latencies") -> dict[str, float]:
    """Median over the rounds of each round's statistic (one slow round is noise).

    A latency below zero is refused (results.NegativeLatency): it would mean the figure
    does not start at the causally first instant."""
    for i, r in enumerate(rounds):
        check_latencies(r, f"{what}, round {i + 1}")
    per = [stats(r) for r in rounds]
    return {k: median([p[k] for p in per]) for k in ("p50", "p99", "p100")} | {
        "worst_p100": max(p["p100"] for p in per)
    }


def pace(pub: ListPublisher) -> None:
    """Wait until ROUND_GAP_S has passed since this publisher's last message."""
    if pub.history:
        time.sleep(max(0.0, pub.last.sent + ROUND_GAP_S - time.monotonic()))


def one_round(
    collector: Any, pub: ListPublisher, version: int, n: int, server: list, jitter_s: int = 0
) -> tuple[float, list[float]]:
    """Publish list `version` and wait until the collector has every one of n agents' reports
    of it: the instant the list was handed to the socket (START_RULE) and each report's time
    after it. Rounds are paced (ROUND_GAP_S) so that the collector's per-topic rate limit
    never holds a report back."""
    collector.send({"cmd": "watch", "version": version, "n": n})
    collector.expect("ok", 10)
    pace(pub)
    t_sent = pub.publish_list(REGION, version, server, resync_jitter_s=jitter_s)
    ev = collector.expect("converged", jitter_s + 60 + n / 50)
    return t_sent, [t - t_sent for t in ev["times"]]


class Phase:
    """One of a fleet size's three runs (ours, the floor, the bare subscribers), on a broker
    of its own: the same configuration, holding only the current list when the run starts.

    One broker for all three would not be fair: our agents keep persistent sessions, so
    after they stop the broker would still queue every new list for each of them while the
    floor and the subscribers were being timed, and it would hold their retained reports."""

    def __init__(self, b: Bench, name: str, nodelay: bool, version: int, server: list) -> None:
        self.broker = b.mosquitto(nodelay=nodelay)
        self.pub = ListPublisher(self.broker.host, self.broker.port, b.subdir(f"keys-{name}"))
        b.callback(self.pub.close)
        self.pub.publish_list(REGION, version, server, resync_jitter_s=0)
        self.where = ("--host", self.broker.host, "--port", self.broker.port)

    def collector(self, b: Bench) -> Any:
        return b.collector(*self.where)

    def broker_cpu(self) -> float:
        t = psutil.Process(self.broker.proc.pid).cpu_times()
        return t.user + t.system

    def close(self) -> None:
        self.pub.close()
        self.broker.stop()


def cpu_of(*workers: Any) -> list[float]:
    """CPU seconds (user + system) each worker process has used so far."""
    out = []
    for w in workers:
        w.send({"cmd": "rss"})
        out.append(w.expect("rss", 30)["cpu"])
    return out


def cpu_per_round(before: list[float], after: list[float], rounds: int) -> list[float]:
    return [(a - b) / rounds for a, b in zip(after, before, strict=True)]


def measure(
    n: int,
    rounds: int,
    jitter_w: int | None,
    workers: int,
    profile_to: Path | None = None,
    nodelay: bool = False,
    floor: bool = False,
    floor_profile_to: Path | None = None,
    floor_each: bool = True,
    subscribers: bool = True,
) -> dict[str, Any]:
    """One fleet size. Ours and the floor (if asked) are both up, each on a broker and a
    collector of its own (Phase), and their list updates alternate, one at a time: ours,
    the floor, ours, ... (never two at once: they would share the 2 cores), so that other
    work on the machine weighs on both alike. Then the bare subscribers on a third broker."""
    out: dict[str, Any] = {"n": n}
    with Bench(f"conv{n}") as b:
        chrony = b.chronyd()
        server = [(chrony.host, chrony.port)]
        version = 1

        # --- ours: N real agents, the real collector ------------------------------------
        ours_phase = Phase(b, "ours", nodelay, version, server)
        ours_col = ours_phase.collector(b)
        fleet, up = b.fleet(
            *ours_phase.where,
            n=n,
            region=REGION,
            trust=ours_phase.pub.pub_path,
            workers=workers,
            ready_s=240 + n / 20,
        )
        out["fleet_up_s"] = up["seconds"]
        out["fleet_rss_mb"] = up["rss"] / 2**20
        out["fleet_kb_per_agent"] = (up["rss"] - up["rss_before"]) / n / 1024

        # --- the floor: N minimal clients, the same collector code ----------------------
        if floor:
            floor_phase = Phase(b, "floor", nodelay, version, server)
            floor_col = floor_phase.collector(b)
            minimal = b.worker(
                "bench.ref_minimal",
                *floor_phase.where,
                *("--n", n, "--region", REGION, "--trust", floor_phase.pub.pub_path),
                *("--initial", version),
            )
            out["floor_up_s"] = minimal.expect("ready", 240 + n / 20)["seconds"]
        if profile_to is not None:
            fleet.profile_from_now(profile_to)
        if floor and floor_profile_to is not None:
            minimal.profile_from_now(floor_profile_to)

        ours: list[list[float]] = []
        made: list[list[float]] = []
        pubacks: list[float] = []
        ours_cpu = [0.0, 0.0, 0.0]  # clients, collector, broker: summed over the rounds
        floors: list[list[float]] = []
        floor_pubacks: list[float] = []
        floor_cpu = [0.0, 0.0, 0.0]
        for _ in range(rounds):
            version += 1
            cpu0 = [*cpu_of(fleet, ours_col), ours_phase.broker_cpu()]
            t_sent, latencies = one_round(ours_col, ours_phase.pub, version, n, server)
            cpu1 = [*cpu_of(fleet, ours_col), ours_phase.broker_cpu()]
            ours_cpu = [a + c1 - c0 for a, c0, c1 in zip(ours_cpu, cpu0, cpu1, strict=True)]
            pubacks.append(ours_phase.pub.last.puback - t_sent)
            ours.append(latencies)
            fleet.send({"cmd": "made", "version": version})
            made.append([t - t_sent for t in fleet.expect("made", 10)["times"]])
            if floor:
                cpu0 = [*cpu_of(minimal, floor_col), floor_phase.broker_cpu()]
                t_sent, latencies = one_round(floor_col, floor_phase.pub, version, n, server)
                cpu1 = [*cpu_of(minimal, floor_col), floor_phase.broker_cpu()]
                floor_cpu = [a + c1 - c0 for a, c0, c1 in zip(floor_cpu, cpu0, cpu1, strict=True)]
                floor_pubacks.append(floor_phase.pub.last.puback - t_sent)
                floors.append(latencies)
        out["ours_cpu"] = [c / rounds for c in ours_cpu]
        out["ours"] = summarise(ours, f"ours, N={n}")
        out["made"] = summarise(made, f"reports made, N={n}")
        out["ours_puback_s"] = median(pubacks)
        if floor:
            out["floor_cpu"] = [c / rounds for c in floor_cpu]
            out["floor"] = summarise(floors, f"minimal-client floor, N={n}")
            out["floor_puback_s"] = median(floor_pubacks)
            if floor_each:  # the same clients, each checking its own copy's signature
                minimal.send({"cmd": "verify", "mode": "each"})
                minimal.expect("ok", 10)
                each: list[list[float]] = []
                for _ in range(rounds):
                    version += 1
                    each.append(one_round(floor_col, floor_phase.pub, version, n, server)[1])
                out["floor_each"] = summarise(each, f"floor, every client verifying, N={n}")
            minimal.stop()
            floor_col.stop()
            floor_phase.close()

        if jitter_w:
            relay = CountingRelay(chrony.host, (chrony.host, chrony.port))
            b.callback(relay.close)
            version += 1
            t_sent, latencies = one_round(
                ours_col, ours_phase.pub, version, n, [relay.address], jitter_w
            )
            check_latencies(latencies, f"jitter run, N={n}")
            queries = [t for t in relay.queries if t >= t_sent]
            buckets = per_second(queries, t_sent)
            out["jitter"] = {
                "w": jitter_w,
                "p100": max(latencies),
                "queries": len(queries),
                "packets": len([t for t in relay.packets if t >= t_sent]),
                "max_per_s": max(buckets) if buckets else 0,
                "buckets": buckets,
                "spread_s": (max(queries) - min(queries)) if queries else 0.0,
            }
        fleet.stop()
        ours_col.stop()
        ours_phase.close()

        # --- bare subscribers ---------------------------------------------------------
        if not subscribers:
            return out
        phase = Phase(b, "subscribers", nodelay, version, server)
        pub = phase.pub
        reference = b.worker(
            "bench.ref_subscribers",
            *phase.where,
            *("--n", n, "--topic", f"clock/v1/regions/{REGION}/servers", "--initial", version),
        )
        ready = reference.expect("ready", 120 + n / 20)
        out["ref_up_s"] = ready["seconds"]
        refs: list[list[float]] = []
        ref_pubacks: list[float] = []
        before_puback: list[int] = []
        for _ in range(rounds):
            version += 1
            pace(pub)  # the same cadence as the others' rounds
            t_sent = pub.publish_list(REGION, version, server, resync_jitter_s=0)
            ev = reference.expect("round", 60)
            refs.append([t - t_sent for t in ev["times"]])
            ref_pubacks.append(pub.last.puback - t_sent)
            before_puback.append(sum(1 for t in ev["times"] if t < pub.last.puback))
        reference.stop()
        phase.close()
        out["reference"] = summarise(refs, f"bare subscribers, N={n}")
        out["ref_puback_s"] = median(ref_pubacks)
        out["ref_before_puback"] = before_puback
    return out
