"""Figure 1: a new list is published -> every agent has reported it, as the collector sees it.

Three processes besides the daemons, so that nobody times itself: this one publishes (and
notes the instant each PUBLISH is handed to its socket: bench/listpub.py, START_RULE), a
fleet worker runs N real agents on one selector loop, a collector worker runs the real
collector and notes when each agent's report of the new version came in. CLOCK_MONOTONIC is
one clock for all of them.

The goal is a ratio, at every N: our p100 at most GOAL_RATIO times the p100 of the
minimal-client floor measured in the same run, their list updates alternating (N clients
doing only what an agent must: bench/ref_minimal.py; the rounds: bench/conv_measure.py).
Absolute times move with the machine (a rerun on the same machine kind measured every
reference 1.5 to 2.3 times slower); the ratio to a floor measured beside it does not. N bare
paho subscribers receiving the same retained update are reported beside it (the broker's and
paho's fan-out alone).

With jitter W the list asks agents to spread their resync over W seconds; a counting relay in
front of the NTP server records when each query arrives, to check that no second gets much
more than its share (about 2N/W at most).
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.conv_measure import (  # noqa: F401 - one_round, summarise, DEFAULT_RATE_LIMIT: used elsewhere
    DEFAULT_RATE_LIMIT,
    GOAL_RATIO,
    REGION,
    ROUND_GAP_S,
    measure,
    one_round,
    summarise,
)
from bench.conv_report import detail_lines, profile_both
from bench.listpub import START_RULE
from bench.results import figure, row

KEY = "convergence"
# The design's figures: p100 <= 1 s at N=1000 and <= 3 s at N=3000 with jitter 0. They hold
# beside the ratio goal: an absolute bound says what an operator gets; the ratio says how much
# of it is our own cost on this machine at this moment.
DESIGN_GOALS_S = {1000: 1.0, 3000: 3.0}
HELP = "new list -> every agent's report of it at the collector, vs bare paho subscribers"
FLOOR_WHAT = "minimal clients (verify, 4-sample NTP, report; one selector)"
OPEN_BROKER_WHY = (
    "Mosquitto open (anonymous, no ACL), as bench/stack.py starts it for every figure: the "
    "goal is a ratio to clients on a broker of the same configuration, and the floor and "
    "reference clients have "
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


PROFILE_MAX_N = 3000


def profile_size(sizes: list[int], missed: list[dict[str, Any]]) -> int:
    """The fleet size to profile: the worst miss (ours over the floor) up to PROFILE_MAX_N,
    else the smallest miss. Both fleets are up at once in that pass: at N=10000 their 20,000
    connections, beside the TIME_WAIT sockets of the rounds before, ran out of loopback
    ephemeral ports (paho binds before it connects)."""
    by_n = {s: r for s in sizes for r in missed if f"N={s}," in r["measure"]}
    small = [s for s in by_n if s <= PROFILE_MAX_N]
    if not small:
        return min(by_n)
    return max(small, key=lambda s: by_n[s]["ratio"] or 0.0)


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
        design_goal = DESIGN_GOALS_S.get(n)
        rows.append(
            row(
                f"p100, N={n}" + (" (the design's absolute goal)" if design_goal else ""),
                "s",
                o["p100"],
                goal=design_goal,
                reference=f"{n} bare paho subscribers (the design's named reference)",
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
        profile = profile_both(profile_size(args.n, missed), args.fleet_workers)
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
