"""Figure 4: three silent servers, then a good one: how long until a good sync; and what
the staggered failover costs when nothing fails.

A silent server (a bound UDP socket that never answers) gives no ICMP shortcut, so a client
asking one server at a time pays its whole timeout for each (the reference: ntplib in order
at 0.3 s). The agent starts the next server's query once the previous one has stayed silent
past a short stagger, while the list's order still decides. The second part counts the
queries a second, healthy server receives while the first answers in its usual time: the
stagger must cost nothing then.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

from bench import ntp_tools
from bench.results import figure, row
from bench.stack import Bench, median
from bench.udpcount import CountingRelay

KEY = "failover"
HELP = (
    "time to a good sync past three silent servers vs sequential ntplib at 0.3 s; "
    "queries to a second server while the first answers"
)
PROMPT_PROBES = 50  # probes of a healthy two-server list, counting the second's queries
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
        first, second = b.chronyd(), b.chronyd()
        relay = CountingRelay(next(b.addresses), (second.host, second.port))
        b.callback(relay.close)
        for _ in range(PROMPT_PROBES):
            probe([(first.host, first.port), relay.address], settings)
        time.sleep(0.2)  # a query started late would arrive now
        extra_queries = len(relay.packets)
    retry = getattr(settings, "retry_timeout_s", 0)
    rows = [
        row(
            f"probe() to a good sync, agent's default settings (timeout {settings.timeout_s:g} s "
            f"per server), median of {args.runs}",
            "s",
            median(ours),
            goal=0.4,
            reference=f"ntplib sequentially at {REFERENCE_TIMEOUT_S} s",
            reference_value=median(reference),
        ),
        row(
            f"packets to the second server while the first answers, {PROMPT_PROBES} probes",
            "",
            extra_queries,
            goal=0,
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
    notes.append(
        f"stagger {settings.stagger_s:g} s (ProbeSettings.stagger_s), per-server timeout "
        f"{settings.timeout_s:g} s: silent servers overlap instead of adding up"
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
            f"then {PROMPT_PROBES} probes of [chronyd, chronyd behind a counting UDP relay]: "
            "every packet the relay saw is an extra query",
        ],
        notes=notes,
    )
