"""The rules every figure is measured and written by: no latency below zero (each starts at
the causally first instant), goals stated as ratios to a reference of the same run, and no
machine paths in the generated files. Nothing here asserts a speed."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import bench.__main__ as bench_main
from bench import render, results
from bench.convergence import summarise
from bench.listpub import ListPublisher
from bench.stack import Bench

REPO = Path(__file__).resolve().parents[2]


def test_a_negative_latency_is_refused_when_a_row_is_made() -> None:
    with pytest.raises(results.NegativeLatency):
        results.row("p50, N=3000", "s", 0.75, reference="bare subscribers", reference_value=-0.01)
    with pytest.raises(results.NegativeLatency):
        results.row("p100", "ms", -1.0)
    # A quantity with a sign (an offset) says so, and is kept.
    assert results.row("offset", "µs", -3.0, signed=True)["ours"] == -3.0
    # Not a time: a negative value is no latency.
    assert results.row("drift", "ppm", -2.0)["ours"] == -2.0


def test_a_round_with_a_negative_latency_fails_the_figure_instead_of_being_summarised() -> None:
    with pytest.raises(results.NegativeLatency, match="bare subscribers, round 2"):
        summarise([[0.01, 0.02], [-0.0097, 0.05]], "bare subscribers")
    assert summarise([[0.0, 0.02], [0.01, 0.05]])["p100"] == pytest.approx(0.035)


def test_a_figure_holding_a_negative_time_is_not_stored(tmp_path: Path) -> None:
    fig = results.figure("convergence", "Convergence", command="c", rows=[], method=[])
    bad = results.row("p50, N=3000", "s", 0.75, reference="ref", reference_value=0.01)
    bad["reference_value"] = -0.0097  # as the old bench measured it from the PUBACK
    fig["rows"] = [bad]
    with pytest.raises(results.NegativeLatency):
        results.store_figure(tmp_path / "r.json", fig, {}, "c")
    assert not (tmp_path / "r.json").exists()


def test_the_runner_writes_a_figure_that_measured_a_negative_latency_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(args: argparse.Namespace) -> dict:
        fig = results.figure("convergence", "Convergence", command="", rows=[], method=["m"])
        r = results.row("p50, N=10000", "s", 2.9, reference="ref", reference_value=0.1)
        r["reference_value"] = -0.132
        fig["rows"] = [r]
        return fig

    monkeypatch.setattr(bench_main, "_module", lambda name: SimpleNamespace(run=run))
    out, res = tmp_path / "B.md", tmp_path / "B.json"
    ok = bench_main.run_figure(
        "convergence", argparse.ArgumentParser(), argparse.Namespace(), out, res, "c", {}
    )
    assert not ok
    text = out.read_text()
    assert "-0.132" not in text and "-132" not in text
    assert "the run failed, nothing measured: bench.results.NegativeLatency" in text


def test_an_old_negative_result_is_rendered_as_refused() -> None:
    r = results.row("p50, N=3000", "s", 0.75, reference="ref", reference_value=0.01)
    r["reference_value"] = -0.00974
    fig = results.figure("convergence", "Convergence", command="c", rows=[r], method=[])
    text = render.render({"figures": {"convergence": fig}, "machine": {}})
    assert "-9.74" not in text and render.REFUSED in text


def test_a_goal_stated_as_a_ratio_is_judged_on_the_ratio() -> None:
    ok = results.row("p100", "s", 0.87, goal_ratio=1.5, reference="floor", reference_value=0.6)
    assert ok["verdict"] == "pass" and ok["goal"] == pytest.approx(0.9)
    assert ok["ratio"] == pytest.approx(1.45)
    miss = results.row("p100", "s", 0.93, goal_ratio=1.5, reference="floor", reference_value=0.6)
    assert miss["verdict"] == "miss"
    none = results.row("p100", "s", 0.93, goal_ratio=1.5, reference="floor")
    assert none["verdict"] == "not measured" and none["goal"] is None
    text = render.render(
        {"figures": {"convergence": results.figure("convergence", "C", command="c",
                                                   rows=[ok], method=[])}}
    )  # fmt: skip
    assert "| <= 1.50× reference = 0.900 s | 0.870 s | floor: 0.600 s | 1.45× | **pass** |" in text


def test_generated_files_hold_no_machine_paths(tmp_path: Path) -> None:
    home = str(Path.home())
    rundir = "/tmp/cfb-sync-yv0uugch"
    fig = results.figure(
        "sync",
        "One sync",
        command="python -m bench sync",
        rows=[results.row("whole process", "s", 0.2, goal=0.3)],
        method=[
            f"`{REPO}/.venv/bin/clockfleet agent --trust-key {rundir}/3-keys/bench.pub "
            f"--state-dir {rundir}/9-once5/state`",
            f"a file at {home}/notes.txt and one at /tmp/other/x",
        ],
        notes=[f"{sys.executable} ran it"],
    )
    machine = {"python": f"3.11.7 ({sys.executable})"}
    data = results.store_figure(tmp_path / "r.json", fig, machine, "python -m bench sync")
    for text in (render.render(data), (tmp_path / "r.json").read_text()):
        assert str(REPO) not in text
        assert "/tmp/" not in text
        if home not in ("/", ""):
            assert home + "/" not in text
        assert "`.venv/bin/clockfleet agent --trust-key RUNDIR/3-keys/bench.pub" in text
        assert "~/notes.txt" in text and "TMPDIR/other/x" in text


@pytest.mark.slow
def test_every_subscriber_receives_a_list_after_the_instant_the_figures_start_from() -> None:
    """The bench publisher's start instant is causally first: no bare subscriber has the list
    before it (many can have it before the PUBACK: the convergence figure counts them)."""
    n, rounds = 200, 3
    with Bench("test-start") as b:
        mosq = b.mosquitto()
        pub = ListPublisher(mosq.host, mosq.port, b.subdir("keys"))
        b.callback(pub.close)
        version = 1
        pub.publish_list("bench", version, [("127.0.0.2", 123)])
        ref = b.worker(
            "bench.ref_subscribers",
            *("--host", mosq.host, "--port", mosq.port, "--n", n),
            *("--topic", "clock/v1/regions/bench/servers", "--initial", version),
        )
        ref.expect("ready", 60)
        for _ in range(rounds):
            version += 1
            t0 = time.monotonic()
            t_sent = pub.publish_list("bench", version, [("127.0.0.2", 123)])
            times = ref.expect("round", 30)["times"]
            sent = pub.last
            assert t0 <= t_sent == sent.sent <= sent.written <= sent.puback
            assert sent.whole  # the socket took the whole PUBLISH within publish()
            assert min(times) >= t_sent, json.dumps([min(times) - t_sent])


def test_list_updates_are_paced_so_the_collectors_rate_limit_never_holds_a_report() -> None:
    """The collector as shipped lets a report topic through at 1 a second (bursts of 5) and
    holds a faster topic's newest report: back-to-back rounds measured that limiter."""
    from bench import convergence

    class Publisher:
        def __init__(self) -> None:
            self.history: list[SimpleNamespace] = []

        @property
        def last(self) -> SimpleNamespace:
            return self.history[-1]

        def publish_list(self, region, version, servers, *, resync_jitter_s=0) -> float:
            self.history.append(SimpleNamespace(sent=time.monotonic()))
            return self.last.sent

    class Collector:
        def send(self, cmd: dict) -> None:
            self.t = time.monotonic()

        def expect(self, event: str, timeout: float) -> dict:
            return {"times": [self.t + 0.001]} if event == "converged" else {}

    pub, col = Publisher(), Collector()
    for version in (2, 3):
        convergence.one_round(col, pub, version, 1, [("127.0.0.2", 123)])
    gap = pub.history[1].sent - pub.history[0].sent
    per_s = convergence.DEFAULT_RATE_LIMIT.per_s
    assert gap >= convergence.ROUND_GAP_S > 1 / per_s


def test_the_command_recorded_holds_no_output_paths() -> None:
    argv = ["convergence", "--out", f"{REPO}/BENCHMARKS.md", "--results=/tmp/r.json", "--n", "5"]
    assert bench_main.top_command(argv) == "python -m bench convergence --n 5"
