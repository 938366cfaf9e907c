"""Child processes of `make demo`: start them, log where they log, stop every one of them.

Every process the demo starts is registered here before anything else can fail, and
`Processes.close()` (called from a `finally`) stops them newest first: clockfleet programs
get SIGTERM to their whole process group, then SIGKILL if they linger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clockfleet import devstack


class StepFailed(RuntimeError):
    """A demo step did not work; the message says which and shows the tail of its log."""


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (log empty)"


@dataclass
class Child:
    """A clockfleet program the demo runs in its own process group."""

    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # The group may hold helpers even after the leader exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)


def clockfleet_argv(*args: str) -> list[str]:
    """The `clockfleet` command of the interpreter running the demo (the venv's)."""
    return [sys.executable, "-m", "clockfleet", *args]


class Processes:
    """Owns every daemon, program and socket the demo starts."""

    def __init__(self, rundir: Path, say: Callable[[str], None]) -> None:
        self.rundir = rundir
        self.say = say
        self._daemons: list[devstack.Daemon] = []
        self._children: list[Child] = []
        self._sockets: list[socket.socket] = []
        self._order: list[object] = []

    # --- daemons from devstack (Mosquitto, chronyd, Prometheus) ---------------------------

    def daemon(self, what: str, start: Callable[[], devstack.Daemon], log: Path) -> devstack.Daemon:
        """Start one devstack daemon; on failure say which and show its log."""
        try:
            d = start()
        except devstack.DaemonError as exc:
            raise StepFailed(f"{what} did not start: {exc}\n  log {log}:\n{tail(log)}") from None
        self._daemons.append(d)
        self._order.append(d)
        self.say(f"started {what} (pid {d.proc.pid}) on {d.host}:{d.port}; log {d.log}")
        return d

    def silent_udp(self, address: str) -> tuple[str, int]:
        s = devstack.silent_udp(address)
        self._sockets.append(s)
        host, port = s.getsockname()[:2]
        self.say(f"opened a silent UDP port (never answers) on {host}:{port}")
        return host, port

    # --- clockfleet programs --------------------------------------------------------------

    def run(self, name: str, args: list[str], timeout: float = 60.0) -> str:
        """Run a one-shot clockfleet command; its output goes to a log; return its stdout."""
        log = self.rundir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = clockfleet_argv(*args)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, start_new_session=True
            )
        except subprocess.TimeoutExpired as exc:
            log.write_text(f"$ {' '.join(argv)}\n{exc.stdout or ''}{exc.stderr or ''}")
            raise StepFailed(f"`clockfleet {args[0]}` did not finish in {timeout:g} s") from None
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}exit {done.returncode}\n")
        if done.returncode != 0:
            raise StepFailed(
                f"`clockfleet {' '.join(args)}` exited {done.returncode}\n  log {log}:\n{tail(log)}"
            )
        self.say(f"ran `clockfleet {args[0]}` (exit 0); log {log}")
        return done.stdout

    def start(self, name: str, args: list[str]) -> Child:
        """Start a long-running clockfleet program in its own process group."""
        log = self.rundir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        out = log.open("ab")
        try:
            proc = subprocess.Popen(
                clockfleet_argv(*args),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops it in order
            )
        finally:
            out.close()
        child = Child(name, proc, log)
        self._children.append(child)
        self._order.append(child)
        self.say(f"started {name} (pid {proc.pid}); log {log}")
        return child

    def dead(self) -> list[str]:
        """Names and log tails of programs and daemons that exited on their own."""
        out = []
        for c in self._children:
            if not c.alive():
                out.append(f"{c.name} exited {c.proc.returncode}; log {c.log}:\n{tail(c.log)}")
        for d in self._daemons:
            if not d.alive():
                out.append(f"{d.name} exited {d.proc.returncode}; log {d.log}:\n{tail(d.log)}")
        return out

    def pids(self) -> list[int]:
        return [c.pid for c in self._children] + [d.proc.pid for d in self._daemons]

    def close(self) -> None:
        """Stop everything, newest first (agents before the broker they report to)."""
        for item in reversed(self._order):
            try:
                item.stop()  # type: ignore[attr-defined]
            except Exception as exc:  # keep going: the rest must stop too
                self.say(f"could not stop {getattr(item, 'name', item)}: {exc}")
        for s in self._sockets:
            s.close()
        self._order.clear()
        self._children.clear()
        self._daemons.clear()
        self._sockets.clear()
