"""Ctrl-C in `make demo`'s live screen stops every process the demo started.

The demo runs on a real pseudo-terminal as its controlling terminal, and Ctrl-C is typed
into it (the terminal driver turns it into SIGINT for the foreground process group, as for a
person at the keyboard).
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from tests.demo.procwatch import Descendants
from tests.helpers import REPO


class Terminal:
    """The master side of a pty: everything the demo writes, drained in a thread (a full
    pty buffer would block the demo)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.text = ""
        self._changed = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self._changed:
                self.text += data.decode(errors="replace")
                self._changed.notify_all()

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._changed:
            while needle not in self.text:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    def type(self, data: bytes) -> None:
        os.write(self.master, data)


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@pytest.mark.timeout(150)
def test_ctrl_c_in_the_live_screen_stops_every_process_the_demo_started(short_tmp: Path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {
        **os.environ,
        "DEMO_RUNDIR": str(short_tmp / "run"),
        "DEMO_CHANGE_AFTER": "5",
        "TERM": "xterm-256color",
    }
    env.pop("DEMO_FOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clockfleet.demo"],
        cwd=REPO,
        env=env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        preexec_fn=_controlling_terminal,
    )
    os.close(slave)
    term = Terminal(master)
    tree = Descendants(proc.pid)
    try:
        # The live screen is up and the change has been published and followed.
        assert term.wait_for("list changed; Ctrl-C stops the demo", 90), term.text[-3000:]
        assert term.wait_for("falseticker", 30), term.text[-3000:]
        term.type(b"\x03")
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tree.join()
        os.close(master)
    assert "stopping every process the demo started" in term.text
    assert len(tree.seen) >= 11
    assert tree.survivors() == []
