"""The `clockfleet` entry point: help, unknown commands, and output into a closed pipe."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from clockfleet.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: clockfleet" in capsys.readouterr().out


def test_unknown_command_is_one_line_and_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'frobnicate'" in err


def test_every_command_has_its_own_help():
    for name in COMMANDS:
        done = subprocess.run(
            [sys.executable, "-m", "clockfleet", name, "--help"], capture_output=True, text=True
        )
        assert done.returncode == 0, (name, done.stderr)
        assert "--broker" in done.stdout or name == "keygen", name


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path, unbuffered: str):
    # `clockfleet ... | head`: the reader is gone before the command writes.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    proc = subprocess.Popen(
        [sys.executable, "-m", "clockfleet", "keygen", "--out", str(tmp_path), "--key-id", "k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    proc.stdout.close()
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err
    assert proc.returncode == 141
    assert (tmp_path / "k.key").exists()  # the work itself was done
