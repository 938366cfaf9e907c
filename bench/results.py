"""The results file: one JSON document, one section per figure, updated figure by figure.

A per-figure run (`python -m bench sync`) replaces only its own section, so BENCHMARKS.md
can always be rendered from the newest value of every figure.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

GoalKind = Literal["max", "min"]

REPO = Path(__file__).resolve().parent.parent
# Units of a time: every one a figure reports is a duration from a cause to its effect (a
# latency, a run time, an absolute error), so none can be below zero.
TIME_UNITS = ("s", "ms", "µs")


class NegativeLatency(ValueError):
    """A time that came out below zero: the measurement has a bug; it is not a result."""


def check_latencies(values: Iterable[float], what: str) -> None:
    """Refuse a negative latency: the start of a measurement must be causally first."""
    low = min(values, default=0.0)
    if low < 0:
        raise NegativeLatency(
            f"{what}: a latency {-low:.6f} s below zero: the instant it starts from is not the "
            "causally first instant (a measurement bug, not a result)"
        )


def check_row(r: dict[str, Any]) -> None:
    """No negative time in a row (unless the row says its quantity is signed)."""
    if r.get("unit") not in TIME_UNITS or r.get("signed"):
        return
    for key in ("ours", "reference_value", "goal"):
        value = r.get(key)
        if isinstance(value, int | float) and value < 0:
            raise NegativeLatency(
                f"{r.get('measure')!r}: {key} is {-value} {r['unit']} below zero: a time "
                "measured from an instant that is not causally first (a measurement bug, not a "
                "result)"
            )


def check_figure(fig: dict[str, Any]) -> None:
    for r in fig.get("rows", []):
        check_row(r)


_TMP = re.escape(tempfile.gettempdir().rstrip("/"))


def neutral(text: str) -> str:
    """Text without this machine's paths: the repository's become relative, a run directory
    RUNDIR, another temporary path TMPDIR/..., the home directory ~, a virtualenv outside
    the repository VENV."""
    repo = str(REPO)
    text = text.replace(repo + "/", "").replace(repo, ".")
    if not Path(sys.prefix).resolve().is_relative_to(REPO):
        text = text.replace(str(Path(sys.prefix).resolve()), "VENV").replace(sys.prefix, "VENV")
    text = re.sub(_TMP + r"/cfb-[^/\s`'\"]+", "RUNDIR", text)
    text = re.sub(_TMP + r"/", "TMPDIR/", text)
    home = str(Path.home())
    if home not in ("/", ""):
        text = re.sub(re.escape(home) + r"(?=/|\b)", "~", text)
    return text


def neutralised(obj: Any) -> Any:
    """`neutral` applied to every string of a JSON-like structure."""
    if isinstance(obj, str):
        return neutral(obj)
    if isinstance(obj, list):
        return [neutralised(v) for v in obj]
    if isinstance(obj, dict):
        return {k: neutralised(v) for k, v in obj.items()}
    return obj


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def row(
    measure: str,
    unit: str,
    ours: float | None,
    *,
    goal: float | None = None,
    goal_kind: GoalKind = "max",
    reference: str | None = None,
    reference_value: float | None = None,
    goal_ratio: float | None = None,
    note: str = "",
    signed: bool = False,
) -> dict[str, Any]:
    """One line of a figure's table: our value, its goal, the reference measured beside it.

    `goal_kind` "max" means smaller is better (a time, a size); "min" means larger is better
    (a rate). `ratio` is ours / reference, whatever the direction. `goal_ratio` states the goal
    as a ratio to the reference measured in the same run (the goal is then goal_ratio times
    that reference; without a reference it is not measured). A time below zero is refused
    (NegativeLatency) unless `signed` says the quantity has a sign.
    """
    ratio = None
    if ours is not None and reference_value is not None and reference_value > 0:
        ratio = ours / reference_value
    if goal_ratio is not None:
        goal = None if ratio is None else goal_ratio * reference_value  # type: ignore[operator]
    verdict: str
    if goal_ratio is not None:
        verdict = "not measured" if ratio is None else "pass" if ratio <= goal_ratio else "miss"
    elif goal is None:
        verdict = "info"
    elif ours is None:
        verdict = "not measured"
    elif goal_kind == "max":
        verdict = "pass" if ours <= goal else "miss"
    else:
        verdict = "pass" if ours >= goal else "miss"
    r = {
        "measure": measure,
        "unit": unit,
        "ours": ours,
        "goal": goal,
        "goal_kind": goal_kind,
        "reference": reference,
        "reference_value": reference_value,
        "ratio": ratio,
        "goal_ratio": goal_ratio,
        "verdict": verdict,
        "note": note,
        "signed": signed,
    }
    check_row(r)
    return r


def figure(
    key: str,
    title: str,
    *,
    command: str,
    rows: list[dict[str, Any]],
    method: list[str],
    notes: list[str] | None = None,
    details: list[str] | None = None,
) -> dict[str, Any]:
    """A figure's section: its rows plus how it was measured, in words, for the reader."""
    return {
        "key": key,
        "title": title,
        "command": command,
        "measured_at": now_iso(),
        "rows": rows,
        "method": method,
        "notes": notes or [],
        "details": details or [],
    }


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"figures": {}}
    if not isinstance(data, dict) or not isinstance(data.get("figures"), dict):
        return {"figures": {}}
    return data


def save(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: an interrupted run must not leave half a results file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def store_figure(
    path: Path, fig: dict[str, Any], machine: dict[str, str], command: str
) -> dict[str, Any]:
    check_figure(fig)
    data = load(path)
    data["figures"][fig["key"]] = fig
    data["machine"] = machine
    data["last_command"] = command
    data["last_run_at"] = now_iso()
    data = neutralised(data)  # every section, older ones too: no machine paths
    save(path, data)
    return data
