"""py-spy profiles of the system under test, for the figures that miss their goal.

A profile is taken in a pass of its own, never during the measured one (sampling costs a
little CPU on 2 cores). BENCH_PROFILE_DIR=DIR profiles every worker of a whole run too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.profile_summary import shares, summarise

PROFILE_ENV = "BENCH_PROFILE_DIR"
RATE = 250  # samples/s


def py_spy() -> str | None:
    spy = Path(sys.executable).parent / "py-spy"
    return str(spy) if spy.exists() else None


def attach(pid: int, argv: list[str], out: Path | None) -> subprocess.Popen | None:
    """py-spy recording process `pid` until it exits, into `out` (raw folded stacks).

    Without `out`, BENCH_PROFILE_DIR (if set) names the directory.
    """
    spy = py_spy()
    if out is None and (d := os.environ.get(PROFILE_ENV)):
        name = next((a for a in argv if a.startswith("bench.")), "worker").removeprefix("bench.")
        out = Path(d) / f"{name}-{pid}.txt"
    if spy is None or out is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [spy, "record", "--format", "raw", "--rate", str(RATE), "--threads", "--nonblocking",
         "--output", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def record_command(argv: list[str], out: Path, rate: int = 1000) -> list[str]:
    """argv run under py-spy from its first instruction (for short-lived processes)."""
    spy = py_spy()
    if spy is None:
        return argv
    return [spy, "record", "--format", "raw", "--rate", str(rate), "--output", str(out), "--",
            *argv]  # fmt: skip


def summary(path: Path, *, under: str | None = None, top: int = 12) -> list[str]:
    """The summary as Markdown lines (a code block), or why there is none."""
    if not path.exists():
        return ["(no profile: py-spy is not installed or could not attach)"]
    return ["```", *summarise(path, top, under).splitlines(), "```"]


def breakdown(path: Path, needles: dict[str, str], under: str | None = None) -> list[str]:
    """One line: the share of samples spent under each named frame."""
    found = shares(path, needles, under)
    if not found:
        return []
    parts = [f"{label} {100 * share:.0f} %" for label, share in found.items()]
    return ["Share of samples (one sample can count under several): " + "; ".join(parts) + ".", ""]
