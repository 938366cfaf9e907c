"""The results file: one JSON document, one section per figure, updated figure by figure.

A per-figure run (`python -m bench sync`) replaces only its own section, so BENCHMARKS.md
can always be rendered from the newest value of every figure.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

GoalKind = Literal["max", "min"]


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
    note: str = "",
) -> dict[str, Any]:
    """One line of a figure's table: our value, its goal, the reference measured beside it.

    `goal_kind` "max" means smaller is better (a time, a size); "min" means larger is better
    (a rate). `ratio` is ours / reference, whatever the direction.
    """
    ratio = None
    if ours is not None and reference_value is not None and reference_value > 0:
        ratio = ours / reference_value  # a negative reference (before the PUBACK) has none
    verdict: str
    if goal is None:
        verdict = "info"
    elif ours is None:
        verdict = "not measured"
    elif goal_kind == "max":
        verdict = "pass" if ours <= goal else "miss"
    else:
        verdict = "pass" if ours >= goal else "miss"
    return {
        "measure": measure,
        "unit": unit,
        "ours": ours,
        "goal": goal,
        "goal_kind": goal_kind,
        "reference": reference,
        "reference_value": reference_value,
        "ratio": ratio,
        "verdict": verdict,
        "note": note,
    }


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
    data = load(path)
    data["figures"][fig["key"]] = fig
    data["machine"] = machine
    data["last_command"] = command
    data["last_run_at"] = now_iso()
    save(path, data)
    return data
