"""`make demo` as a newcomer runs it: `DEMO_FOR=N python -m clockfleet.demo`.

One run of the real demo (broker, chronyd servers, publisher, collector, Prometheus, five
agents; about 40 s) serves every test in this module; each test checks one promise of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.demo.procwatch import Descendants
from tests.helpers import REPO

RUN_FOR_S = 30
CHANGE_AFTER_S = 10


@dataclass
class DemoRun:
    returncode: int
    output: str
    rundir: Path
    tree: Descendants  # every process seen under the demo
    final: dict

    def rows(self, region: str) -> list[dict]:
        return [r for r in self.final["rows"].values() if r["region"] == region]

    def role(self, hostport: str) -> str:
        for name, (host, port) in self.final["servers"].items():
            if f"{host}:{port}" == hostport:
                return name
        return hostport


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    # A short path: chronyd's command socket lives under the run directory (108-byte limit).
    rundir = Path(tmp_path_factory.mktemp("demo", numbered=True)).resolve()
    if len(str(rundir)) > 60:
        import tempfile

        rundir = Path(tempfile.mkdtemp(prefix="cfdemo-", dir="/tmp"))
    env = {
        **os.environ,
        "DEMO_FOR": str(RUN_FOR_S),
        "DEMO_CHANGE_AFTER": str(CHANGE_AFTER_S),
        "DEMO_RUNDIR": str(rundir / "run"),
    }
    out = (rundir / "demo.out").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clockfleet.demo"],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    tree = Descendants(proc.pid)
    try:
        proc.wait(timeout=RUN_FOR_S + 90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    tree.join()
    out.seek(0)
    output = out.read()
    out.close()
    final_file = rundir / "run" / "final-view.json"
    final = json.loads(final_file.read_text()) if final_file.exists() else {}
    return DemoRun(proc.returncode, output, rundir / "run", tree, final)


@pytest.mark.timeout(RUN_FOR_S + 120)
def test_demo_exits_0_with_every_agent_on_a_good_sync_of_the_latest_list(demo: DemoRun):
    assert demo.returncode == 0, demo.output[-4000:]
    assert "every agent (5) reported a good sync" in demo.output
    for row in demo.final["rows"].values():
        assert row["ok"] is True, row
        assert row["list_version"] == demo.final["published"][row["region"]], row


def test_demo_leaves_no_process_running(demo: DemoRun):
    # Broker, three chronyd, Prometheus, collector, five agents at least.
    assert len(demo.tree.seen) >= 11, demo.tree.seen
    assert demo.tree.survivors() == []


def test_demo_prints_where_metrics_and_prometheus_are(demo: DemoRun):
    assert "metrics         http://127.0.0.1:" in demo.output
    assert "prometheus      http://127.0.0.1:" in demo.output


def test_changed_list_shows_silent_server_as_timeout_and_skewed_one_as_falseticker(demo):
    rows = demo.rows("us-east")
    assert len(rows) == 2
    for row in rows:
        outcomes = [(demo.role(hp), outcome) for hp, outcome in row["tried"]]
        assert outcomes == [("SILENT", "timeout"), ("SKEWED", "falseticker"), ("GOOD_A", "ok")]
        assert abs(row["offset_s"]) < 0.1


def test_reordered_list_moves_its_agents_to_the_new_first_server(demo: DemoRun):
    rows = demo.rows("eu-west")
    assert len(rows) == 2
    assert {demo.role(r["server"]) for r in rows} == {"GOOD_A"}
    # Before the change they synced on GOOD_B, the list's first server then.
    assert "pbx-dub-1 (eu-west)" in demo.output
    assert "ok via good-b" in demo.output


def test_single_server_region_follows_the_skewed_clock_and_shows_the_drift(demo: DemoRun):
    (row,) = demo.rows("ap-south")
    assert demo.role(row["server"]) == "SKEWED"
    assert row["offset_s"] == pytest.approx(3.0, abs=0.1)
    assert row["note"].startswith("single server")  # the report says it was unconfirmed


def test_prometheus_scrapes_the_collector_and_evaluates_the_drift_alert(demo: DemoRun):
    assert "prometheus: scraping the collector" in demo.output, demo.output[-3000:]
    # ap-south's agent follows a clock 3 s ahead: ClockfleetAgentDrift (|offset| > 0.5 s)
    # is pending (it fires after its `for: 5m`, longer than the demo runs).
    assert "ClockfleetAgentDrift pending (pbx-mum-1)" in demo.output
