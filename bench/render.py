"""BENCHMARKS.md, rendered from the results file (never written by hand).

It holds no machine paths (results.neutral: the repository's paths relative, run directories
RUNDIR, the home directory ~) and no time below zero (shown as refused: such a value is a
measurement bug; results.row refuses them when a figure is measured)."""

from __future__ import annotations

from typing import Any

from bench.results import TIME_UNITS, neutral

# Figures in the order docs/decisions.md ("Performance goals") lists them; a figure not yet
# measured says so.
ORDER = [
    ("convergence", "1. Convergence: new list -> every agent reported it, as the collector saw"),
    ("ingest", "2. Collector ingest, restart with a retained fleet, /metrics"),
    ("sync", "3. One sync: whole `agent --once` process and one in-process probe"),
    ("failover", "4. Failover past three silent servers"),
    ("accuracy", "5. Offset accuracy against a server with a known offset"),
    ("footprint", "6. Agent footprint"),
    ("scaleout", "7. Beyond one broker: a 3-node NATS cluster, and a node killed mid-run"),
    ("bridges", "8. One edge-bridge hop (central + edges)"),
    ("nts", "9. One sync with NTS: `agent --once` with NTS-KE, and a resync with kept cookies"),
    ("identities", "10. Broker identities: provisioning and revocation at fleet scale"),
]


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit in ("reports/s", "msg/s", "queries/s", "packets/s"):
        return f"{value:,.0f} {unit}"
    if unit == "s":
        if abs(value) < 0.01:
            return f"{value * 1000:.2f} ms"
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "µs":
        return f"{value:.1f} µs"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit in ("count", ""):
        return f"{value:g}"
    return f"{value:.4g} {unit}"


REFUSED = "refused: below zero, a measurement bug"


def _value(r: dict[str, Any], key: str) -> str:
    """A row's value; a negative time (an old result, from before the check) is not shown."""
    value = r.get(key)
    if r["unit"] in TIME_UNITS and not r.get("signed") and value is not None and value < 0:
        return REFUSED
    return fmt(value, r["unit"])


def _goal(r: dict[str, Any]) -> str:
    sign = "<=" if r["goal_kind"] == "max" else ">="
    if r.get("goal_ratio") is not None:
        at = "" if r["goal"] is None else f" = {_value(r, 'goal')}"
        return f"{sign} {r['goal_ratio']:.2f}× reference{at}"
    if r["goal"] is None:
        return "–"
    return f"{sign} {_value(r, 'goal')}"


def _ratio(r: dict[str, Any]) -> str:
    return "–" if r["ratio"] is None else f"{r['ratio']:.2f}×"


def _reference(r: dict[str, Any]) -> str:
    if r["reference"] is None:
        return "–"
    return f"{r['reference']}: {_value(r, 'reference_value')}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| measure | goal | ours | reference, same run | ours ÷ reference | result |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours = _value(r, "ours")
        if r["note"]:
            ours += f" ({r['note']})"
        out.append(
            f"| {_cell(r['measure'])} | {_goal(r)} | {_cell(ours)} | {_cell(_reference(r))} "
            f"| {_ratio(r)} "
            f"| **{r['verdict']}** |"
        )
    return out


def render(data: dict[str, Any]) -> str:
    machine = data.get("machine", {})
    figures = data.get("figures", {})
    lines = [
        "# clockfleet benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Each figure is",
        "measured beside its reference **in the same run** on the same machine, against real",
        "Mosquitto and real chronyd on loopback (started and stopped by the benchmark).",
        "A single figure is re-measured with `python -m bench NAME` (its command is under its",
        "heading); that updates only its own section (results in `bench/results.json`).",
        "",
        f"Last run: {data.get('last_run_at', '–')}, command: `{data.get('last_command', '–')}`",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in machine.items()]
    lines += ["", "## Summary", ""]
    lines += [
        "| figure | measure | goal | ours | reference, same run | ours ÷ reference | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, _title in ORDER:
        fig = figures.get(key)
        if fig is None:
            lines.append(f"| {key} | not measured yet | | | | | |")
            continue
        for r in fig["rows"]:
            if r["verdict"] == "info":
                continue
            lines.append(
                f"| {key} | {_cell(r['measure'])} | {_goal(r)} | {_value(r, 'ours')} "
                f"| {_cell(_reference(r))} | {_ratio(r)} | **{r['verdict']}** |"
            )
    for key, title in ORDER:
        lines += ["", f"## {title}", ""]
        fig = figures.get(key)
        if fig is None:
            lines.append("Not measured yet.")
            continue
        lines.append(f"Measured {fig['measured_at']} by `{fig['command']}`.")
        if "load_before" in fig:
            during = f", at most {fig['load_max']} during the run" if "load_max" in fig else ""
            lines.append(
                f"It took {fig['duration_s']} s; 1-minute load average {fig['load_before']} "
                f"before, {fig['load_after']} after{during} (on {machine.get('cores', '?')} "
                "cores)."
            )
        lines.append("")
        lines += _table(fig["rows"])
        if fig["method"]:
            lines += ["", "How:", ""]
            lines += [f"- {m}" for m in fig["method"]]
        if fig["notes"]:
            lines += ["", "Notes:", ""]
            lines += [f"- {n}" for n in fig["notes"]]
        if fig["details"]:
            lines += [""] + fig["details"]
        if fig.get("profile"):
            lines += [
                "",
                "Where the time goes (py-spy, in a pass of its own after the measured one):",
                "",
            ]
            lines += fig["profile"]
    # Nothing of this machine's file system: repository-relative or neutral text only.
    return neutral("\n".join(lines) + "\n")
