"""The demo's process keeping: failures name the step and show its log; close() stops all."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clockfleet import devstack
from clockfleet.demo_procs import Processes, StepFailed


@pytest.fixture
def procs(short_tmp: Path):
    lines: list[str] = []
    p = Processes(short_tmp, lines.append)
    p.lines = lines  # type: ignore[attr-defined]
    yield p
    p.close()


def _wait_dead(child, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while child.alive() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_program_that_stops_on_its_own_is_named_with_its_exit_code_and_log(procs):
    child = procs.start("agent-nobody", ["agent", "--backend", "observe"])  # no --id: exit 2
    _wait_dead(child)
    (report,) = procs.dead()
    assert report.startswith("agent-nobody exited 2")
    assert "no agent id" in report


def test_a_failed_one_shot_step_raises_with_the_tail_of_its_log(procs, short_tmp: Path):
    with pytest.raises(StepFailed) as failed:
        procs.run("keygen", ["keygen", "--out", str(short_tmp / "k"), "--key-id", "bad.id"])
    assert "exited 2" in str(failed.value)
    assert "bad.id" in str(failed.value)
    assert str(short_tmp / "logs" / "keygen.log") in str(failed.value)


def test_a_daemon_that_does_not_start_raises_with_the_tail_of_its_log(procs, short_tmp: Path):
    log = short_tmp / "d.log"
    log.write_text("line 1\nthe real reason\n")

    def start() -> devstack.Daemon:
        raise devstack.DaemonError("did not listen")

    with pytest.raises(StepFailed, match="the real reason"):
        procs.daemon("some daemon", start, log)


def test_close_stops_every_program_and_daemon_started(procs, short_tmp: Path):
    shipped = devstack.start_shipped_mosquitto(short_tmp / "broker")
    broker = procs.daemon("mosquitto", lambda: shipped.daemon, shipped.daemon.log)
    listen = f"127.0.0.1:{devstack.free_port()}"
    collector = procs.start(
        "collector", ["collector", "--listen", listen, *shipped.login("collector")]
    )
    assert collector.alive() and broker.alive()
    procs.close()
    assert not collector.alive() and not broker.alive()
    assert any("started collector" in line for line in procs.lines)
