"""Daemons and helpers every figure shares: a broker sized for a fleet, NTP servers, workers.

Everything starts on loopback in a run directory and is stopped by the ExitStack that
started it, also when a figure fails half-way.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import profiling
from clockfleet import devstack

REPO = Path(__file__).resolve().parent.parent

# Persistence off: an autosave every second would charge the broker's disk writes to
# whatever figure runs at the time. Connection logging off: 3000 connects would too.
# max_queued_messages lifts Mosquitto's silent cap of 1020 retained messages per QoS 1
# wildcard subscriber (docs/decisions.md), so a backlog figure measures draining, not dropping.
BENCH_MOSQUITTO_CONF = """\
per_listener_settings false
listener @PORT@ @HOST@
allow_anonymous true
persistence false
max_connections -1
max_queued_messages @MAXQ@
connection_messages false
log_type error
log_type warning
log_dest file @RUNDIR@/mosquitto.log
"""


def raise_nofile() -> int:
    """Soft open-file limit up to the hard one: every MQTT client is a socket.

    Child processes (mosquitto, the fleet) inherit it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loopback_block() -> Iterator[str]:
    """Fresh loopback addresses in a random /16 of 127/8, apart from the tests' 127.0.x.y.

    chrony keys sources by IP, and port-123 servers need an address nobody else holds.
    """
    a = random.randint(64, 250)
    b = random.randint(1, 250)
    for c in range(2, 250):
        yield f"127.{a}.{b}.{c}"


def clockfleet_bin() -> str:
    exe = Path(sys.executable).parent / "clockfleet"
    return str(exe) if exe.exists() else (shutil.which("clockfleet") or "clockfleet")


class Bench(contextlib.ExitStack):
    """The daemons of one figure's run: cleaned up on exit, whatever happens."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.rundir = Path(tempfile.mkdtemp(prefix=f"cfb-{name}-", dir="/tmp"))
        self.callback(shutil.rmtree, self.rundir, True)
        self.addresses = loopback_block()
        self._n = 0

    def subdir(self, name: str) -> Path:
        self._n += 1
        d = self.rundir / f"{self._n}-{name}"
        d.mkdir(parents=True)
        return d

    def mosquitto(self, *, max_queued: int = 1_000_000, nodelay: bool = False) -> devstack.Daemon:
        conf = BENCH_MOSQUITTO_CONF + ("set_tcp_nodelay true\n" if nodelay else "")
        d = devstack.start_open_mosquitto(
            self.subdir("mosquitto"),
            why="benchmark: the same broker for our agents and the bare-client references",
            conf_template=conf,
            values={"MAXQ": max_queued},
        )
        self.callback(d.stop)
        return d

    def chronyd(
        self, *, port: int | None = None, fake_offset_s: float | None = None
    ) -> devstack.Daemon:
        d = devstack.start_chronyd_server(
            self.subdir("chronyd"),
            address=next(self.addresses),
            port=port,
            fake_offset_s=fake_offset_s,
        )
        self.callback(d.stop)
        return d

    def silent(self) -> tuple[str, int]:
        s = devstack.silent_udp(next(self.addresses))
        self.callback(s.close)
        return s.getsockname()[:2]

    def worker(self, module: str, *args: Any, profile_to: Path | None = None) -> Worker:
        w = Worker([sys.executable, "-m", module, *map(str, args)], self.rundir, profile_to)
        self.callback(w.stop)
        return w

    def collector(self, *where: Any, ready_s: float = 30) -> Worker:
        """The real collector (bench/collector_worker.py) on `where` (its broker flags),
        subscribed and ready."""
        w = self.worker("bench.collector_worker", *where)
        w.expect("ready", ready_s)
        return w

    def fleet(
        self, *where: Any, n: int, region: str, trust: Path, workers: int, ready_s: float
    ) -> tuple[Worker, dict[str, Any]]:
        """n real agents of `region` on one selector loop (bench/fleet_worker.py) on `where`,
        every one connected: the worker and its "ready" event (start-up time, memory)."""
        w = self.worker(
            "bench.fleet_worker",
            *where,
            *("--n", n, "--region", region, "--trust", trust, "--workers", workers),
        )
        return w, w.expect("ready", ready_s)


class Worker:
    """A child process speaking JSON lines on stdout (events) and reading commands on stdin.

    Figures run the system under test and its reference in their own processes, so neither
    shares an interpreter (or a GIL) with the publisher that times them.
    """

    def __init__(self, argv: list[str], cwd: Path, profile_to: Path | None = None) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self.stderr_path = cwd / f"worker-{os.getpid()}-{time.monotonic_ns()}.err"
        self._err = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            cwd=str(REPO),
            env=env,
            text=True,
            bufsize=1,
        )
        self.argv = argv
        self.profiler = profiling.attach(self.proc.pid, argv, profile_to)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._unclaimed: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def profile_from_now(self, out: Path) -> None:
        """py-spy on this worker from now until it exits (not its start-up), into `out`."""
        if self.profiler is None:
            self.profiler = profiling.attach(self.proc.pid, self.argv, out)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))
        self.events.put({"event": "exited", "rc": self.proc.wait()})

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The oldest event named `event` not yet taken; other events wait their turn."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._unclaimed):
                if ev.get("event") == event:
                    return self._unclaimed.pop(i)
                if ev.get("event") in ("exited", "error"):
                    raise RuntimeError(f"worker {ev}{self.tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker gave no {event!r} within {timeout} s{self.tail()}")
            try:
                self._unclaimed.append(self.events.get(timeout=left))
            except queue.Empty:
                continue

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            text = self.stderr_path.read_text(errors="replace")[-3000:]
            return f"\n--- worker stderr ---\n{text}" if text else ""
        return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.send({"cmd": "stop"})
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()
        if self.profiler is not None:
            self.profiler.wait(30)


def emit(event: str, **fields: Any) -> None:
    """Worker side of Worker: one JSON line per event, flushed at once."""
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def commands() -> Iterator[dict[str, Any]]:
    """Worker side: commands from the orchestrator, one JSON object a line."""
    for line in sys.stdin:
        with contextlib.suppress(ValueError):
            yield json.loads(line)


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (q in 0..1): p100 is the maximum, never an interpolation."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed_run(argv: list[str], timeout: float = 30.0, **kw: Any) -> tuple[float, str, int]:
    """Wall time of a whole process from spawn to exit, its output and exit code."""
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    return time.monotonic() - t0, out.stdout + out.stderr, out.returncode
