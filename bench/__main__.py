"""`python -m bench [FIGURE] [options]`: measure clockfleet against its references.

Without a figure (what `make bench` runs) every figure runs in order. Each figure stores its
section in the results file and BENCHMARKS.md is rendered again from that file, so a single
figure's run updates only its own section.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import machine, render, results
from bench.stack import REPO, raise_nofile

FIGURES = [
    "convergence",
    "ingest",
    "sync",
    "nts",
    "failover",
    "accuracy",
    "footprint",
    "scaleout",
    "bridges",
    "identities",
]
DEFAULT_OUT = REPO / "BENCHMARKS.md"
DEFAULT_RESULTS = REPO / "bench" / "results.json"


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"bench.{name}")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"the Markdown file to render (default {DEFAULT_OUT.name} in the repository)",
    )
    common.add_argument(
        "--results",
        type=Path,
        default=None,
        help="the JSON results file the Markdown is rendered from (default: "
        "bench/results.json, or --out with a .json suffix when --out is given)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure clockfleet against the references in docs/decisions.md (real "
        "Mosquitto and chronyd on loopback) and write BENCHMARKS.md. Without a figure: all of "
        "them.",
    )
    sub = parser.add_subparsers(dest="figure", metavar="FIGURE")
    subparsers = {"all": sub.add_parser("all", parents=[common], help="every figure, in order")}
    for name in FIGURES:
        mod = _module(name)
        sp = sub.add_parser(name, parents=[common], help=mod.HELP, description=mod.HELP)
        mod.add_arguments(sp)
        subparsers[name] = sp
    return parser, subparsers


def command_of(name: str, sp: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The exact command that re-measures this figure with these arguments."""
    words = ["python", "-m", "bench", name]
    for action in sp._actions:
        if not action.option_strings or action.dest in ("help", "out", "results"):
            continue
        value = getattr(args, action.dest, None)
        if isinstance(action, argparse._StoreTrueAction):
            if value:
                words.append(action.option_strings[0])
        elif isinstance(value, list):
            words += [action.option_strings[0], *map(str, value)]
        elif value is not None:
            words += [action.option_strings[0], str(value)]
    return shlex.join(words)


class LoadPeak:
    """The highest 1-minute load average seen while a figure runs (sampled every 5 s): other
    work on the machine (other engineers' tests) slows every figure, and a ratio to a
    reference of the same run is the answer to it, but the reader should know."""

    def __init__(self) -> None:
        self.peak = os.getloadavg()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(5.0):
            self.peak = max(self.peak, os.getloadavg()[0])

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(1)
        return max(self.peak, os.getloadavg()[0])


def top_command(argv: list[str]) -> str:
    """The command as run, without --out and --results (where to write, not what to
    measure; they may name this machine's paths)."""
    words: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in ("--out", "--results"):
            skip = True
            continue
        if word.startswith(("--out=", "--results=")):
            continue
        words.append(word)
    return shlex.join(["python", "-m", "bench", *words])


def failed_figure(name: str, command: str, error: str) -> dict[str, Any]:
    return results.figure(
        name,
        name,
        command=command,
        rows=[],
        method=[],
        notes=[f"the run failed, nothing measured: {error}"],
    )


def run_figure(
    name: str,
    sp: argparse.ArgumentParser,
    args: argparse.Namespace,
    out: Path,
    results_path: Path,
    top_command: str,
    host: dict[str, str],
) -> bool:
    command = command_of(name, sp, args)
    print(f"== {name}: {command}", flush=True)
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    peak = LoadPeak()
    ok = True
    try:
        fig = _module(name).run(args)
        fig["command"] = command
        results.check_figure(fig)  # a negative latency is a bug: the figure failed
    except Exception as exc:  # one broken figure must not cost the others
        traceback.print_exc()
        last = traceback.format_exception_only(exc)[-1].strip()
        fig = failed_figure(name, command, last[:500])
        ok = False
    fig["duration_s"] = round(time.monotonic() - t0, 1)
    # Other work on the machine skews every figure: say how busy it was.
    fig["load_before"] = round(load, 2)
    fig["load_after"] = round(os.getloadavg()[0], 2)
    fig["load_max"] = round(peak.stop(), 2)
    data = results.store_figure(results_path, fig, host, top_command)
    out.write_text(render.render(data))
    for r in fig["rows"]:
        print(
            f"   {r['measure']}: {render.fmt(r['ours'], r['unit'])}"
            f" (goal {render._goal(r)}, reference {render._reference(r)}) {r['verdict']}",
            flush=True,
        )
    for n in fig["notes"]:
        print(f"   note: {n}", flush=True)
    print(f"   ({fig['duration_s']} s)", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv.insert(0, "all")
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    out: Path = args.out or DEFAULT_OUT
    results_path: Path = args.results or (out.with_suffix(".json") if args.out else DEFAULT_RESULTS)
    raise_nofile()
    host = machine.describe()
    if args.figure == "all":
        top = "make bench (python -m bench)"
        ok = True
        for name in FIGURES:
            sp = subparsers[name]
            fig_args = sp.parse_args([])
            ok &= run_figure(name, sp, fig_args, out, results_path, top, host)
    else:
        top = top_command(argv)
        ok = run_figure(args.figure, subparsers[args.figure], args, out, results_path, top, host)
    print(f"wrote {out} (results in {results_path})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
