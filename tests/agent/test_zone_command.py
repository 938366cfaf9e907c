"""The operator's command after a zone change: run once per change, never through a shell,
bounded by its timeout, its result in the report."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from clockfleet.agent.zone_change import ZoneSettings, apply_zone
from clockfleet.agent.zone_command import run_zone_command
from tests.helpers import wait_until


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    os.symlink("/usr/share/zoneinfo/Etc/UTC", tmp_path / "etc/localtime")
    return tmp_path


def recorder(tmp_path: Path) -> tuple[list[str], Path]:
    log = tmp_path / "ran"
    return ["/bin/sh", "-c", f'echo "$0" >> {log}', "reloaded"], log


def test_the_command_runs_once_after_the_zone_changed_and_not_again(root, tmp_path):
    argv, log = recorder(tmp_path)
    settings = ZoneSettings(root, False, argv, 5)

    first = apply_zone("a1", "Asia/Tokyo", settings)
    second = apply_zone("a1", "Asia/Tokyo", settings)

    assert first.command is not None and first.command.exit_code == 0
    assert first.command.error is None and first.command.timezone == "Asia/Tokyo"
    assert second.command is None  # the zone was already right: nothing to reload
    assert log.read_text() == "reloaded\n"
    assert (first.timezone, first.expected) == ("Asia/Tokyo", "Asia/Tokyo")


def test_an_argument_reaches_the_program_verbatim_never_a_shell(tmp_path):
    argv = ["/usr/bin/touch", str(tmp_path / "kept; touch pwned")]

    result = run_zone_command(argv, 5, "Asia/Tokyo")

    assert result.exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["kept; touch pwned"]


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state == "Z"  # killed, waiting for its new parent to reap it


def test_a_command_past_its_timeout_is_killed_with_what_it_started(tmp_path):
    pidfile = tmp_path / "child.pid"
    argv = ["/bin/sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"]
    start = time.monotonic()

    result = run_zone_command(argv, 0.5, "Asia/Tokyo")

    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - start < 3
    assert "did not finish in 0.5 s" in (result.error or "")
    child = int(pidfile.read_text())
    wait_until(lambda: gone(child), timeout_s=5)  # its group was killed, not only the shell


def test_a_failing_or_missing_command_is_a_result_not_an_exception(tmp_path):
    failed = run_zone_command(["/bin/sh", "-c", "echo no pbx here; exit 3"], 5, "Asia/Tokyo")
    missing = run_zone_command([str(tmp_path / "nope")], 5, "Asia/Tokyo")

    assert failed.exit_code == 3 and "no pbx here" in (failed.error or "")
    assert missing.exit_code is None and not missing.timed_out and missing.error
