"""Agent fixtures: a real chronyd client (-x, never touches the clock) to hand sources to.

`chrony_client` -> ChronyClient: .sourcedir, .socket, .log, .daemon, .chronyc(*args),
.sources() (addresses chronyd lists), .wait_for_log(text).

Also, for every test under tests/agent: a guard that makes the `system` backend's real
syscalls fail in the test process (which runs as root with CAP_SYS_TIME), so no test can
move this machine's clock by accident.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clockfleet import devstack
from clockfleet.agent import backend_system
from tests.agent.servicekit import Keys, Publisher, make_keys


@pytest.fixture(autouse=True)
def _never_touch_the_real_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, offset_s: float) -> None:
        raise OSError(1, "tests never change this machine's clock (tests/agent/conftest.py)")

    monkeypatch.setattr(backend_system.KernelClock, "step", refuse)
    monkeypatch.setattr(backend_system.KernelClock, "slew", refuse)


@dataclass
class ChronyClient:
    daemon: devstack.Daemon
    sourcedir: Path
    socket: Path
    log: Path

    def chronyc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["chronyc", "-h", str(self.socket), *args], capture_output=True, text=True, timeout=30
        )

    def sources(self) -> list[str]:
        out = self.chronyc("-c", "-n", "sources").stdout
        return [line.split(",")[2] for line in out.splitlines() if line.count(",") >= 2]

    def wait_for_log(self, text: str, count: int = 1, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            content = self.log.read_text(errors="replace")
            if content.count(text) >= count:
                return content
            time.sleep(0.1)
        raise AssertionError(f"{text!r} x{count} not in chronyd's log:\n{content}")


def start_chrony_client(rundir: Path, extra: str = "") -> ChronyClient:
    """chronyd as a client with its own sourcedir and command socket; no NTP port, -x."""
    rundir.mkdir(parents=True, exist_ok=True)
    os.chmod(rundir, 0o700)
    sourcedir = rundir / "sources.d"
    sourcedir.mkdir(exist_ok=True)
    sock = rundir / "c.sock"
    conf = rundir / "chronyd.conf"
    conf.write_text(
        "port 0\n"
        "cmdport 0\n"
        f"bindcmdaddress {sock}\n"
        f"pidfile {rundir}/c.pid\n"
        f"driftfile {rundir}/c.drift\n"
        f"sourcedir {sourcedir}\n" + extra
    )
    args = [devstack.require("chronyd"), "-x", "-d", "-f", str(conf)]
    if devstack.is_root():
        args += ["-u", "root"]
    log = rundir / "chronyd.log"
    proc = subprocess.Popen(args, stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    daemon = devstack.Daemon("chronyd-client", proc, log, 0, files={"conf": conf})
    client = ChronyClient(daemon, sourcedir, sock, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        if sock.exists() and client.chronyc("tracking").returncode == 0:
            return client
        time.sleep(0.02)
    daemon.stop()
    raise devstack.DaemonError(f"chronyd client did not start: {daemon.log_tail()}")


@pytest.fixture
def chrony_client(short_tmp: Path) -> Iterator[ChronyClient]:
    """A running chronyd client (-x) with an empty sourcedir; stopped after the test."""
    client = start_chrony_client(short_tmp / "client")
    yield client
    client.daemon.stop()


@pytest.fixture
def keys(short_tmp: Path) -> Keys:
    """A fresh Ed25519 signing key pair (the publisher's key, the agents' trust key)."""
    return make_keys(short_tmp / "keys")


@pytest.fixture
def publisher(broker: str, keys: Keys) -> Iterator[Publisher]:
    """A plain paho client publishing signed lists and profiles to the test broker."""
    p = Publisher(broker, keys)
    yield p
    p.close()
