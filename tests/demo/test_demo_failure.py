"""When a part of `make demo` dies, the demo says which, shows its log, and cleans up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.demo.procwatch import Descendants
from tests.helpers import REPO


def _wait_for_text(path: Path, text: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.timeout(150)
def test_an_agent_killed_mid_run_fails_the_demo_with_its_log_and_nothing_left(short_tmp: Path):
    env = {
        **os.environ,
        "DEMO_FOR": "60",
        "DEMO_CHANGE_AFTER": "50",
        "DEMO_RUNDIR": str(short_tmp / "run"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "clockfleet.demo"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    tree = Descendants(proc.pid)
    output: list[str] = []
    started = threading.Event()
    victim: list[int] = []

    def read() -> None:
        for line in proc.stdout:
            output.append(line)
            if m := re.search(r"started agent-pbx-mum-1 \(pid (\d+)\)", line):
                victim.append(int(m.group(1)))
            if "list change " in line:  # the banner: everything has started
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(90), "".join(output)[-3000:]
        log = short_tmp / "run" / "logs" / "agent-pbx-mum-1.log"
        assert _wait_for_text(log, "synced to", 30), "the agent never synced"
        os.kill(victim[0], signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(10)
        tree.join()
    text = "".join(output)
    assert "a process stopped on its own" in text
    assert "agent-pbx-mum-1 exited -9" in text
    assert "pbx-mum-1: synced to" in text  # the tail of its log is shown
    assert "stopping every process the demo started" in text
    assert tree.survivors() == []
