"""Figure 4: three silent servers, then a good one: how long until a good sync.

A silent server (a bound UDP socket that never answers) gives no ICMP shortcut, so every
client pays its whole timeout for each; the figure shows what the agent's timeout setting
costs against the naive sequential ntplib loop at 0.3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from bench import ntp_tools
from bench.results import figure, row
from bench.stack import Bench, median

KEY = "failover"
HELP = "time to a good sync past three silent servers vs sequential ntplib at 0.3 s"
REFERENCE_TIMEOUT_S = 0.3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=3, help="runs of each client (default 3)")


def agent_probe_settings() -> Any:
    """The ProbeSettings an agent runs with when its config says nothing about `probe:`."""
    from clockfleet.agent.config import AgentConfig
    from clockfleet.agent.probe import ProbeSettings

    return ProbeSettings(**AgentConfig().probe)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from clockfleet.agent.probe import probe

    settings = agent_probe_settings()
    with Bench(KEY) as b:
        silent = [b.silent() for _ in range(3)]
        good = b.chronyd()
        servers = [*silent, (good.host, good.port)]
        ours, reference, all_silent, outcomes = [], [], [], []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            result = probe(servers, settings)
            ours.append(time.perf_counter() - t0)
            outcomes = [a.outcome for a in result.tried]
            if not result.ok:
                raise RuntimeError(f"probe past silent servers failed: {result.tried}")
            seconds, index = ntp_tools.ntplib_sequential(servers, REFERENCE_TIMEOUT_S)
            if index != 3:
                raise RuntimeError(f"ntplib got an answer from silent server {index}")
            reference.append(seconds)
        t0 = time.perf_counter()
        failed = probe(silent, settings)
        all_silent.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with contextlib.suppress(RuntimeError):  # "no server in the list answered"
            ntp_tools.ntplib_sequential(silent, REFERENCE_TIMEOUT_S)
        reference_fail = time.perf_counter() - t0
    retry = getattr(settings, "retry_timeout_s", 0)
    rows = [
        row(
            f"probe() to a good sync, agent's default settings (timeout {settings.timeout_s:g} s "
            f"per server), median of {args.runs}",
            "s",
            median(ours),
            goal=1.0,
            reference=f"ntplib sequentially at {REFERENCE_TIMEOUT_S} s",
            reference_value=median(reference),
        ),
        row(
            "the three silent servers alone: until probe() reports the failure"
            + (f" (second pass at {retry:g} s included)" if retry else ""),
            "s",
            median(all_silent),
            reference=f"ntplib sequentially at {REFERENCE_TIMEOUT_S} s until all failed",
            reference_value=reference_fail,
        ),
    ]
    notes = [
        f"outcomes reported by probe(): {', '.join(outcomes)}; with only the silent servers: "
        f"{', '.join(a.outcome for a in failed.tried)} ({failed.note or 'no note'})"
    ]
    if median(ours) > 1.0:
        notes.append(
            f"failover costs the per-server timeout ({settings.timeout_s:g} s, "
            "ProbeSettings.timeout_s in agent/ntp_checks.py) for each silent server: a silent "
            "server cannot be told from a slow one sooner than that"
        )
    return figure(
        KEY,
        "Failover",
        command="",
        rows=rows,
        method=[
            "list: three silent servers (devstack.silent_udp: bound UDP sockets that never "
            "answer, each on its own loopback address), then a chronyd (-x)",
            "probe() in process with the agent's default settings (AgentConfig().probe), "
            "timed from call to result; then once with the silent servers only",
            "reference: ntplib request() on each server in order, 0.3 s timeout, until one answers",
        ],
        notes=notes,
    )
