"""Figure 1: a new list is published -> every agent has reported it, as the collector sees it.

Three processes besides the daemons, so that nobody times itself: this one publishes (and
notes the instant each PUBLISH is handed to its socket: bench/listpub.py, START_RULE), a
fleet worker runs N real agents on one selector loop, a collector worker runs the real
collector and notes when each agent's report of the new version came in. CLOCK_MONOTONIC is
one clock for all of them.

The goal is a ratio, at every N: our p100 at most GOAL_RATIO times the p100 of the
minimal-client floor measured in the same run on the same broker and collector (N clients
doing only what an agent must: bench/ref_minimal.py). Absolute times move with the machine
(a rerun on the same machine kind measured every reference 1.5 to 2.3 times slower); the
ratio to a floor measured beside it does not. N bare paho subscribers receiving the same
retained update are reported beside it (the broker's and paho's fan-out alone).

With jitter W the list asks agents to spread their resync over W seconds; a counting relay in
front of the NTP server records when each query arrives, to check that no second gets much
more than its share (about 2N/W at most).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import profiling
from bench.listpub import START_RULE, ListPublisher
from bench.profile_summary import NO_FRAME, layers
from bench.results import check_latencies, figure, row
from bench.stack import Bench, median, quantile
from bench.udpcount import CountingRelay, per_second
from clockfleet.collector.ratelimit import DEFAULT_RATE_LIMIT

KEY = "convergence"
HELP = "new list -> every agent's report of it at the collector, vs bare paho subscribers"
REGION = "bench"
# Our p100 at most this many times the minimal-client floor's p100, same run, every N.
GOAL_RATIO = 1.5
PROFILE_ROUNDS = 3
# Rounds at least this far apart: the collector (as shipped) lets each agent's report topic
# through at DEFAULT_RATE_LIMIT.per_s sustained (1 a second, bursts of 5) and holds a faster
# topic's newest message until it has a token again. Rounds back to back exhausted the burst
# and a round then measured the limiter (reports held up to 1 s), not the convergence.
ROUND_GAP_S = 1.0 / DEFAULT_RATE_LIMIT.per_s + 0.2
FLOOR_WHAT = "minimal clients (verify, 4-sample NTP, report; one selector)"
OPEN_BROKER_WHY = (
    "Mosquitto open (anonymous, no ACL), as bench/stack.py starts it for every figure: the "
    "goal is a ratio to clients on the same broker, and the floor and reference clients have "
    "no identities; the shipped configuration adds a password check per connect and an ACL "
    "check per message delivered or published, for our agents and the floor alike"
)


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
        default=None,
        help="fleet sizes at which the minimal-client floor runs (default: every --n; the goal "
        "is a ratio to it, so a size without it has no verdict)",
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
        collector = b.worker("bench.collector_worker", *self.where)
        collector.expect("ready", 30)
        return collector

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
        fleet = b.worker(
            "bench.fleet_worker",
            *ours_phase.where,
            *("--n", n, "--region", REGION, "--trust", ours_phase.pub.pub_path),
            *("--workers", workers),
        )
        up = fleet.expect("ready", 240 + n / 20)
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


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def detail_lines(results: list[dict[str, Any]]) -> list[str]:
    """The per-N tables under the figure: the goal per N, then where each N's time goes."""
    lines = [
        f"The goal per fleet size: ours p100 at most {GOAL_RATIO}× the minimal-client floor's "
        "p100, both measured in this run on the same broker and collector (seconds from the "
        "list's hand-over to the publisher's socket; median over rounds of each round's "
        "p100):",
        "",
        f"| N | ours p100 | floor p100 | ours ÷ floor | verdict (<= {GOAL_RATIO}×) "
        "| ours worst round | floor worst round | no goal: floor with every client verifying, "
        "p100 (ours ÷ it) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        o, f, fe = res["ours"], res.get("floor"), res.get("floor_each")
        each = f"{fe['p100']:.3f} ({o['p100'] / fe['p100']:.2f}×)" if fe else "–"
        if f is None:
            lines.append(
                f"| {res['n']} | {o['p100']:.3f} | not measured | – | not measured "
                f"| {o['worst_p100']:.3f} | – | {each} |"
            )
            continue
        ratio = o["p100"] / f["p100"]
        verdict = "pass" if ratio <= GOAL_RATIO else "miss"
        lines.append(
            f"| {res['n']} | {o['p100']:.3f} | {f['p100']:.3f} | {ratio:.2f}× | **{verdict}** "
            f"| {o['worst_p100']:.3f} | {f['worst_p100']:.3f} | {each} |"
        )
    lines += [
        "",
        "CPU seconds per list update (user + system, over the measured rounds, whatever else "
        "the machine ran meanwhile): the clients' process, the collector, the broker; ours "
        "beside the floor (2 cores: a process above 1 s of CPU per update cannot finish in "
        "less than that time; the kernel counts CPU time in 10 ms ticks):",
        "",
        "| N | ours: agents / collector / broker | floor: clients / collector / broker "
        "| agents ÷ floor clients | per agent, ours / floor |",
        "|---|---|---|---|---|",
    ]
    for res in results:
        oc, fc = res.get("ours_cpu"), res.get("floor_cpu")
        if oc is None:
            continue
        ours = " / ".join(f"{c:.3f}" for c in oc)
        if fc is None:
            lines.append(f"| {res['n']} | {ours} | – | – | {oc[0] / res['n'] * 1e6:.0f} µs / – |")
            continue
        lines.append(
            f"| {res['n']} | {ours} | {' / '.join(f'{c:.3f}' for c in fc)} "
            f"| {f'{oc[0] / fc[0]:.2f}×' if fc[0] > 0 else '–'} "
            f"| {oc[0] / res['n'] * 1e6:.0f} / "
            f"{fc[0] / res['n'] * 1e6:.0f} µs |"
        )
    lines += [
        "",
        "Per fleet size, in seconds from the hand-over (median over rounds of each round's "
        "statistic). PUBACK: when the publisher had the broker's PUBACK, the broker's fan-out "
        "to the subscribers included; before PUBACK: bare subscribers that had the list before "
        "the publisher had its PUBACK, per round (why the PUBACK cannot be the start):",
        "",
        "| N | ours p50 / p99 / p100 | of which the agents' side: report made, p50 / p100 "
        "| floor p50 / p99 / p100 | bare subscribers p50 / p99 / p100 | PUBACK: ours / floor "
        "/ bare | before PUBACK | start-up: fleet (connect + first sync of all), RSS / floor / "
        "subscribers |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        o, a, r, f = res["ours"], res["made"], res["reference"], res.get("floor")
        floor = f"{f['p50']:.3f} / {f['p99']:.3f} / {f['p100']:.3f}" if f else "–"
        fpub = _ms(res["floor_puback_s"]) if f else "–"
        fup = f"{res['floor_up_s']:.1f} s" if f else "–"
        lines.append(
            f"| {res['n']} | {o['p50']:.3f} / {o['p99']:.3f} / {o['p100']:.3f} "
            f"| {a['p50']:.3f} / {a['p100']:.3f} | {floor} "
            f"| {r['p50']:.4f} / {r['p99']:.4f} / {r['p100']:.4f} "
            f"| {_ms(res['ours_puback_s'])} / {fpub} / {_ms(res['ref_puback_s'])} ms "
            f"| {', '.join(map(str, res['ref_before_puback']))} of {res['n']} "
            f"| {res['fleet_up_s']:.1f} s, {res['fleet_rss_mb']:.0f} MB "
            f"({res['fleet_kb_per_agent']:.0f} KB/agent) / {fup} / {res['ref_up_s']:.2f} s |"
        )
    return lines


# Where an agent's time can go, for the profile's breakdown (frames matched by substring).
PROFILE_NEEDLES = {
    "paho: reading packets (loop_read)": "loop_read (",
    "paho: writing packets (loop_write)": "loop_write (",
    "signature check (nacl verify)": "verify (",
    "JSON decode": "decode (",
    "the probe": "probe",
    "building and publishing the report": "report",
    "the selector wait (epoll)": "select (",
}

# The layers of one list update, in both processes: each sample goes to the layer of the
# innermost frame any rule knows (bench/profile_summary.py, layers).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("the bench worker's own work (commands, events, report hooks)", (
        "bench/stack.py", "bench/fleet_worker.py", "main (bench/fleet_worker.py",
    )),
    ("paho: socket writes", ("_sock_send", "_packet_write", "loop_write", "_write_pending")),
    ("paho: socket reads, packet parsing, PUBACKs", (
        "_sock_recv", "_packet_read", "_handle_pubackcomp", "properties.py", "_packet.py",
        "BrokerLink._on_publish", "on_acked",
    )),
    ("NTP: one sample (send, receive, checks)", (
        "exchange_steps", "check_reply", "gate (", "ntp/packet.py", "encode_request",
        "Burst.send", "Burst.on_readable",
    )),
    ("NTP: a burst's socket (open, close)", (
        "open_socket", "socket.py", "sample_burst_steps", "Burst.__init__", "Burst.finish",
    )),
    ("the probe pass around the samples (probe_pass.py, probe.py, choice.py)", (
        "probe_pass.py", "agent/probe.py", "choice.py",
    )),
    ("the report: build, encode, publish", (
        "report.py", "codec.py", "_sync_done", "Agent._probed", "Client.publish", "_packet_queue",
        "report (bench/ref_minimal.py", "measured (bench/ref_minimal.py", "json/encoder.py",
    )),
    ("the list: receive, decode, verify, apply", (
        "_on_list", "intake.py", "_handle_on_message", "_handle_publish", "verify", "signing",
        "Agent._on_message", "on_message (bench/ref_minimal.py", "parse_and_verify",
        "json/decoder.py",
    )),
    ("status, state and the rest of the agent (service.py, link.py)", (
        "service.py", "link.py", "state.py", "sync.py",
    )),
    ("the loop: timers, epoll, dispatch", (
        "localloop.py", "selectors.py", "fleet.py", "selectorloop.py", "loop_misc",
    )),
]  # fmt: skip


def layer_table(ours: Path, floor: Path, cpu_ours: float, cpu_floor: float, n: int) -> list[str]:
    """Both processes' time by layer, as µs of CPU per client per list update."""
    a, b = summary_layers(ours), summary_layers(floor)
    if not a or not b:
        return []
    # A sample without a single Python frame is mostly a thread blocked outside Python (the
    # worker's main thread reading its commands) that py-spy did not see as idle: it is left
    # out of the split, which shares out CPU time the kernel counted.
    left_out = (a.pop(NO_FRAME, 0.0), b.pop(NO_FRAME, 0.0))
    a = {k: v / sum(a.values()) for k, v in a.items()}
    b = {k: v / sum(b.values()) for k, v in b.items()}
    lines = [
        "CPU per client per list update, by layer: the profiled rounds' CPU (kernel count) "
        "split by the shares of the samples with a Python frame (samples without one, left "
        f"out: ours {100 * left_out[0]:.0f} %, the floor's {100 * left_out[1]:.0f} %):",
        "",
        "| layer | ours, µs | floor, µs | ours − floor, µs |",
        "|---|---|---|---|",
    ]
    labels = [label for label, _ in LAYERS] + ["other"]
    for label in labels:
        x = a.get(label, 0.0) * cpu_ours / n * 1e6
        y = b.get(label, 0.0) * cpu_floor / n * 1e6
        if x or y:
            lines.append(f"| {label} | {x:.0f} | {y:.0f} | {x - y:+.0f} |")
    lines.append(
        f"| all | {cpu_ours / n * 1e6:.0f} | {cpu_floor / n * 1e6:.0f} "
        f"| {(cpu_ours - cpu_floor) / n * 1e6:+.0f} |"
    )
    return [*lines, ""]


def summary_layers(path: Path) -> dict[str, float]:
    return layers(path, LAYERS)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    sizes = list(args.n)
    floor_sizes = list(args.n) if args.floor_n is None else list(args.floor_n)
    jitter_n = args.jitter_n if args.jitter_w else None
    if jitter_n is not None and jitter_n not in sizes:
        sizes.append(jitter_n)
    jitter = None
    measured: list[dict[str, Any]] = []
    for n in sizes:
        rounds = args.rounds if n in args.n else 0
        jw = args.jitter_w if n == jitter_n else None
        res = measure(n, max(rounds, 1), jw, args.fleet_workers, floor=n in floor_sizes)
        if "jitter" in res:
            jitter = res["jitter"] | {"n": n}
        if n not in args.n:
            continue
        measured.append(res)
        o, r, f = res["ours"], res["reference"], res.get("floor")
        rows.append(
            row(
                f"p100, N={n}, jitter 0, against the minimal-client floor",
                "s",
                o["p100"],
                goal_ratio=GOAL_RATIO,
                reference=f"{n} {FLOOR_WHAT}",
                reference_value=f["p100"] if f else None,
            )
        )
        if "floor_each" in res:
            rows.append(
                row(
                    f"p100, N={n}, against the floor with every client verifying its own copy",
                    "s",
                    o["p100"],
                    reference=f"{n} minimal clients, each checking the signature (the old floor)",
                    reference_value=res["floor_each"]["p100"],
                )
            )
        rows.append(
            row(
                f"p50, N={n}",
                "s",
                o["p50"],
                reference=f"{n} {FLOOR_WHAT}",
                reference_value=f["p50"] if f else None,
            )
        )
        rows.append(
            row(
                f"p100, N={n}",
                "s",
                o["p100"],
                reference=f"{n} bare paho subscribers",
                reference_value=r["p100"],
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
            f"hand-over: {jitter['buckets']}"
        )
    if args.what_if_n:
        n = args.what_if_n
        res = measure(n, args.rounds, None, args.fleet_workers, nodelay=True)
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
    missed = [r for r in rows if r["verdict"] == "miss" and r.get("goal_ratio")]
    if missed:
        n = max(s for s in args.n if any(f"N={s}," in r["measure"] for r in missed))
        profile = profile_both(n, args.fleet_workers)
    fig = figure(
        KEY,
        "Convergence",
        command="",
        rows=rows,
        method=[
            START_RULE + "; the same rule in every figure that times a published list "
            "(convergence, scale-out, bridges, capacity: they share bench/listpub.py)",
            "one chronyd (-x) per fleet size; ours and the floor each on a Mosquitto 2.0 "
            "(persistence off, max_queued_messages raised) and a collector of their own, both "
            "up at once, their list updates alternating one at a time (ours, the floor, ours, "
            "...) so that other work on the machine weighs on both alike; then the bare "
            "subscribers on a third (one broker for all would queue every list for our agents' "
            f"persistent sessions while the others are timed); {OPEN_BROKER_WHY}; the bench "
            "publishes a signed, retained "
            "QoS 1 list with its own small publisher (bench/listpub.py: the protocol's message "
            "types and signing, as `clockfleet publish` sends them), since the figure starts at "
            "the hand-over to the socket; `clockfleet publish`'s own run time is not a figure of "
            "docs/decisions.md and is not measured",
            "ours: N real Agent objects (observe backend, trust key, no start-up delay) on one "
            "agent.fleet.Fleet selector loop in one process; the real collector (in-process "
            "API, per-report hook) in another; per agent: the hook's time of its first report "
            "of the new version minus the hand-over",
            "floor (the goal's reference, at every N): N minimal clients on one selector in one "
            "process (bench/ref_minimal.py) that, on the new list, check its signature with "
            "PyNaCl, make the same four-sample NTP exchange with its first server (non-blocking, "
            "on the same selector, so that the clients' exchanges overlap as our agents' do) and "
            "publish a retained QoS 1 report; timed at the same collector as ours: the least "
            f"work an agent can do; the goal is ours p100 at most {GOAL_RATIO}× the floor's "
            "p100 at each N, measured in the same run (a ratio, since absolute times move with "
            "the machine and its load)",
            "the floor parses and checks each distinct payload once for all its clients, as our "
            "agents do (agent.fleet.VerifiedCache: N hosts check in parallel, one core would "
            "serialise N checks); a floor must not do work that ours skips. Beside it, no goal: "
            "the same clients each checking their own copy, in further rounds (as the floor did "
            "before: it then made N Ed25519 checks where our agents made one)",
            "bare subscribers (reported beside, no goal): N bare paho clients on one selector in "
            "one process subscribed to the same list topic at QoS 1, doing json.loads; per "
            "client: receive time minus the hand-over",
            "jitter: the list names a counting UDP relay in front of the same chronyd and sets "
            "resync_jitter_s W; the relay notes each query's arrival (first packet from a new "
            "client socket), counted per whole second from the hand-over",
            f"list updates at least {ROUND_GAP_S:.1f} s apart: the collector as shipped lets "
            "each agent's report topic through at 1 a second sustained (bursts of 5) and holds "
            "a faster topic's newest report until it has a token again; rounds back to back "
            "measured that limiter (reports held up to 1 s) after a few rounds",
            "a latency below zero is refused, not reported (bench/results.py: the figure fails)",
        ],
        notes=notes,
        details=detail_lines(measured),
    )
    fig["profile"] = profile
    return fig


def profile_both(n: int, workers: int) -> list[str]:
    """py-spy profiles of our agents' process and of the floor's, at N=n, in a pass of
    their own: from when each is up (start-up not included) over PROFILE_ROUNDS updates."""
    with tempfile.TemporaryDirectory(prefix="cfb-prof-") as d:
        ours, floor = Path(d) / "fleet.txt", Path(d) / "floor.txt"
        res = measure(
            n,
            PROFILE_ROUNDS,
            None,
            workers,
            profile_to=ours,
            floor=True,
            floor_profile_to=floor,
            floor_each=False,
            subscribers=False,
        )
        o, f = res["ours"]["p100"], res["floor"]["p100"]
        lines = [
            f"Profiled pass at N={n}: ours p100 {o:.3f} s, floor p100 {f:.3f} s "
            f"({o / f:.2f}×; py-spy sampling at {profiling.RATE}/s slows both); CPU per list "
            f"update: our agents' process {res['ours_cpu'][0]:.3f} s, the floor's "
            f"{res['floor_cpu'][0]:.3f} s.",
            "",
        ]
        lines += layer_table(ours, floor, res["ours_cpu"][0], res["floor_cpu"][0], n)
        lines += [
            f"Our agents' process at N={n} ({PROFILE_ROUNDS} list updates, start-up excluded):",
            "",
        ]
        lines += profiling.breakdown(ours, PROFILE_NEEDLES)
        lines += profiling.summary(ours, top=20)
        lines += [
            "",
            f"The minimal clients' process at N={n} ({PROFILE_ROUNDS} list updates, start-up "
            "excluded):",
            "",
        ]
        lines += profiling.breakdown(floor, PROFILE_NEEDLES)
        lines += profiling.summary(floor, top=20)
    return lines
