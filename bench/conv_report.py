"""The convergence figure's tables under its rows, and the profile of ours beside the floor
taken when a ratio misses its goal (bench/convergence.py runs them)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import profiling
from bench.conv_measure import GOAL_RATIO, PROFILE_ROUNDS, measure
from bench.profile_summary import NO_FRAME, layers


def _ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def detail_lines(results: list[dict[str, Any]]) -> list[str]:
    """The per-N tables under the figure: the goal per N, then where each N's time goes."""
    lines = [
        f"The goal per fleet size: ours p100 at most {GOAL_RATIO}× the minimal-client floor's "
        "p100, both measured in this run, their list updates alternating, each on a broker and "
        "a collector of its own (seconds from the list's hand-over to the publisher's socket; "
        "median over rounds of each round's p100):",
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
