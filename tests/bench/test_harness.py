"""The benchmark harness works: each figure runs end to end at a tiny size and writes its
section. Nothing here asserts a speed: speed is what BENCHMARKS.md reports, not a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import render, results

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "convergence": [
        "--n",
        "5",
        "--rounds",
        "1",
        "--jitter-n",
        "5",
        "--jitter-w",
        "1",
        "--what-if-n",
        "5",
    ],
    "ingest": ["--reports", "300", "--fleet", "30", "--repeat", "1"],
    "sync": ["--runs", "1", "--probes", "5"],
    "failover": ["--runs", "1"],
    "accuracy": ["--probes", "5", "--runs", "1"],
    "footprint": ["--seconds", "1"],
    "identities": ["--n", "20", "--connected", "20", "--no-dynsec"],
}


def run_bench(figure: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", figure, *TINY[figure], *extra, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.slow
@pytest.mark.parametrize("figure", list(TINY))
def test_figure_runs_at_tiny_size_and_writes_its_section(figure: str, short_tmp: Path) -> None:
    out = short_tmp / "bench.md"
    done = run_bench(figure, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(out.with_suffix(".json").read_text())
    fig = data["figures"][figure]
    assert fig["rows"], fig["notes"]
    assert all(isinstance(r["ours"], float | int) for r in fig["rows"]), fig["rows"]
    assert fig["command"].startswith(f"python -m bench {figure} ")
    text = out.read_text()
    assert f"by `{fig['command']}`" in text
    assert "## Machine" in text and "| mosquitto |" in text


def test_a_figure_run_keeps_the_other_figures_sections(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    machine = {"cores": "2"}
    first = results.figure(
        "sync", "One sync", command="python -m bench sync", rows=[], method=["m"]
    )
    first["rows"] = [results.row("whole process", "s", 0.25, goal=0.3)]
    results.store_figure(path, first, machine, "python -m bench sync")
    second = results.figure("failover", "Failover", command="x", rows=[], method=[])
    second["rows"] = [results.row("to a good sync", "s", 3.0, goal=1.0)]
    data = results.store_figure(path, second, machine, "python -m bench failover")
    text = render.render(data)
    assert "| sync | whole process | <= 0.300 s | 0.250 s |" in text
    assert "| failover | to a good sync | <= 1.000 s | 3.000 s |" in text
    assert "**pass**" in text and "**miss**" in text


def test_a_row_compares_with_its_goal_in_the_right_direction() -> None:
    assert results.row("rate", "reports/s", 25000, goal=20000, goal_kind="min")["verdict"] == (
        "pass"
    )
    assert results.row("rate", "reports/s", 15000, goal=20000, goal_kind="min")["verdict"] == (
        "miss"
    )
    assert results.row("time", "s", 1.5, goal=1.0)["verdict"] == "miss"
    assert results.row("time", "s", None, goal=1.0)["verdict"] == "not measured"
    assert results.row("time", "s", 0.5, reference="ref", reference_value=0.25)["ratio"] == 2.0
