"""Figure 5: offset error against a chronyd whose clock is off by a known amount.

The server runs under libfaketime (`fake_offset_s`), so every client should measure exactly
that offset; the error is what it measured minus the truth.
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Any

from bench import ntp_tools
from bench.results import figure, row
from bench.stack import Bench, median

KEY = "accuracy"
HELP = "offset error of probe() vs chronyd -Q and ntpdig against a libfaketime server"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", type=int, default=100, help="probe() calls (default 100)")
    p.add_argument("--runs", type=int, default=5, help="chronyd -Q and ntpdig runs (default 5)")
    p.add_argument(
        "--offset", type=float, default=-3.0, help="the server's fake offset, s (default -3)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from clockfleet.agent.probe import ProbeSettings, probe

    truth = args.offset
    notes: list[str] = []
    ntpdig_problem = ntp_tools.install_ntpdig()
    if os.geteuid() != 0:
        ntpdig_problem = "not root: no server on port 123, which ntpdig needs"
    with Bench(KEY) as b:
        server = b.chronyd(port=None if ntpdig_problem else 123, fake_offset_s=truth)
        target = [(server.host, server.port)]
        settings = ProbeSettings()
        probe(target, settings)  # first call pays imports and ARP-free loopback set-up
        errors = []
        for _ in range(args.probes):
            result = probe(target, settings)
            if result.ok and result.chosen and result.chosen.sample:
                errors.append(result.chosen.sample.offset_s - truth)
        chrony_errors = []
        for _ in range(args.runs):
            shot = ntp_tools.chronyd_query(server.host, server.port)
            if shot.offset_s is not None:
                chrony_errors.append(shot.offset_s - truth)
        dig_errors = []
        if ntpdig_problem is None:
            for _ in range(args.runs):
                shot = ntp_tools.ntpdig_query(server.host)
                if shot.offset_s is not None:
                    dig_errors.append(shot.offset_s - truth)
        else:
            notes.append(f"ntpdig not measured: {ntpdig_problem}")
        lib_errors = []
        for _ in range(args.probes):
            _, offset = ntp_tools.ntplib_request(server.host, server.port)
            lib_errors.append(offset - truth)

    def mae(values: list[float]) -> float | None:
        return median([abs(v) for v in values]) * 1e6 if values else None

    ours = mae(errors)
    rows = [
        row(
            f"median abs. error of probe() over {len(errors)} probes",
            "µs",
            ours,
            goal=20.0,
            reference=f"chronyd -Q maxsamples 1, {len(chrony_errors)} runs",
            reference_value=mae(chrony_errors),
        )
    ]
    if dig_errors:
        rows.append(
            row(
                f"median abs. error of probe() over {len(errors)} probes",
                "µs",
                ours,
                goal=20.0,
                reference=f"ntpdig, {len(dig_errors)} runs",
                reference_value=mae(dig_errors),
            )
        )
    if errors:
        rows.append(
            row(
                "worst abs. error of probe()",
                "µs",
                max(abs(e) for e in errors) * 1e6,
                reference="worst ntplib request()",
                reference_value=max(abs(e) for e in lib_errors) * 1e6,
            )
        )
        notes.append(
            f"probe(): median signed error {statistics.median(errors) * 1e6:+.1f} µs, "
            f"stdev {statistics.pstdev(errors) * 1e6:.1f} µs; "
            f"{args.probes - len(errors)} of {args.probes} probes failed"
        )
    rows.append(
        row(
            "median abs. error of ntplib request() (no checks; for scale)",
            "µs",
            mae(lib_errors),
        )
    )
    return figure(
        KEY,
        "Offset accuracy",
        command="",
        rows=rows,
        method=[
            f"one chronyd (-x, local stratum 8) under libfaketime FAKETIME={truth:+g}s on its "
            "own loopback address"
            + ("" if ntpdig_problem else ", port 123 so that ntpdig can reach it"),
            "error = measured offset (server minus local) minus the fake offset; every client "
            "queries the same server in the same run",
            "probe() with the agent's default ProbeSettings (4 samples, lowest delay kept); "
            "chronyd -Q with `iburst maxsamples 1`; `ntpdig -j`",
        ],
        notes=notes,
    )
