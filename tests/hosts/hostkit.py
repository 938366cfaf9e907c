"""Debian hosts running systemd as PID 1 in Docker containers, for the agent package's tests.

Images come from packaging/images/build-image.sh (debootstrap + `docker import`, cached under
.cache/images); packages from packaging/build_deb.py. Containers are testcontainers
`DockerContainer`s with host networking only, so the agent inside reaches the broker and the
NTP servers the tests start on loopback and nothing else; they never get CAP_SYS_TIME (the
clock is this machine's own), so every time daemon inside runs without touching it.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Before testcontainers is imported anywhere: its reaper image cannot be pulled here, and
# this machine has a /.dockerenv, from which it would wrongly conclude it runs in a container.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")

from testcontainers.core.container import DockerContainer

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
SUITES = ("bullseye", "bookworm", "trixie")


class HostError(AssertionError):
    pass


def engine_problem() -> str | None:
    """Why no container can run here, or None when the Docker engine answers."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # the SDK raises several types for "no engine"
        return (
            f"no Docker engine ({type(exc).__name__}: {str(exc)[:200]}); "
            "`make test` as root installs and starts one"
        )
    return None


def build_image(suite: str) -> str:
    """clockfleet-host:SUITE, from the cached root file system when there is one."""
    r = subprocess.run(
        ["sh", str(REPO / "packaging/images/build-image.sh"), suite, str(CACHE / "images")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if r.returncode != 0:
        raise HostError(f"image {suite}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
    return f"clockfleet-host:{suite}"


def build_deb(suite: str, out: Path, version: str | None = None) -> Path:
    import sys

    argv = [sys.executable, str(REPO / "packaging/build_deb.py"), "--suite", suite]
    argv += ["--out", str(out), "--cache", str(CACHE)]
    if version:
        argv += ["--version", version]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise HostError(f"deb {suite}: {r.stdout[-2000:]}{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


@dataclass
class Result:
    code: int
    out: str


class SystemdHost:
    """One container booted with /lib/systemd/systemd as PID 1 (docs/hosts.md has the settings)."""

    def __init__(self, image: str, suite: str) -> None:
        self.suite = suite
        self.container = (
            DockerContainer(image)
            .with_command("/lib/systemd/systemd")
            .with_volume_mapping("/sys/fs/cgroup", "/sys/fs/cgroup", "rw")
            .with_tmpfs_mount("/run")
            .with_tmpfs_mount("/run/lock")
            .with_kwargs(
                network_mode="host",
                cgroupns="host",
                # Mount namespaces for the unit's sandboxing; never SYS_TIME.
                cap_add=["SYS_ADMIN"],
                stop_signal="SIGRTMIN+3",  # systemd's "halt"; SIGTERM would wait 10 s
            )
        )

    def start(self) -> SystemdHost:
        self.container.start()
        state = wait_for(lambda: self._running(), 60, "systemd to reach running")
        if state != "running":
            failed = self.sh("systemctl --failed --no-legend").out
            raise HostError(f"{self.suite}: systemd is {state}: {failed}")
        return self

    def _running(self) -> str | None:
        r = self.sh("systemctl is-system-running")
        return r.out.strip() if r.out.strip() in ("running", "degraded") else None

    def stop(self) -> None:
        self.container.stop()

    def sh(self, script: str, timeout_s: float = 120) -> Result:
        wrapped = self.container.get_wrapped_container()
        argv = ["timeout", str(int(timeout_s)), "sh", "-c", script]
        code, out = wrapped.exec_run(argv, demux=False)
        return Result(code, (out or b"").decode(errors="replace"))

    def ok(self, script: str, timeout_s: float = 120) -> str:
        r = self.sh(script, timeout_s)
        if r.code != 0:
            raise HostError(f"{self.suite}: `{script}` exited {r.code}:\n{r.out[-3000:]}")
        return r.out

    def put(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        """Write a file inside the container as root:root (never under /tmp: see install)."""
        raw = data.encode() if isinstance(data, str) else data
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(Path(path).name)
            info.size = len(raw)
            info.mode = mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(raw))
        parent = str(Path(path).parent)
        self.ok(f"mkdir -p {shlex.quote(parent)}")
        self.container.get_wrapped_container().put_archive(parent, buf.getvalue())

    def install(self, deb: Path, *extra: str) -> str:
        # Not /tmp: Debian 13 mounts a tmpfs there, hiding what `docker cp` puts underneath.
        self.put(f"/root/{deb.name}", deb.read_bytes())
        opts = " ".join(extra)
        return self.ok(
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {opts} /root/{deb.name} 2>&1"
        )

    def unit(self, prop: str, unit: str = "clockfleet-agent.service") -> str:
        return self.ok(f"systemctl show -p {prop} --value {unit}").strip()

    def journal(self, unit: str = "clockfleet-agent.service") -> str:
        return self.sh(f"journalctl -u {unit} --no-pager -o cat").out

    def main_pid(self) -> int:
        return int(self.unit("MainPID"))


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    value = predicate()
    if not value:
        raise HostError(f"timed out after {timeout_s} s waiting for {what}")
    return value


def agent_yaml(
    agent_id: str,
    broker: str,
    *,
    region: str = "hosts",
    backend: str = "observe",
    trust: bool = True,
    extra: dict[str, Any] | None = None,
) -> str:
    """A host's agent.yaml as an operator writes it; loopback broker and servers only."""
    data: dict[str, Any] = {
        "id": agent_id,
        "region": region,
        "broker": broker,
        "username": agent_id,
        "password_file": "/etc/clockfleet/mqtt-password",
        "backend": backend,
        "state_dir": "/var/lib/clockfleet",
        "tz_root": "/",
        # The RFC 4330 start-up delay would only make the tests wait.
        "startup_delay_s": 0,
        "resync_jitter_s": 0,
        "retry_min_s": 1,
        "retry_max_s": 2,
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1,
    }
    if trust:
        data["trust_keys"] = ["/etc/clockfleet/trust/"]
    data.update(extra or {})
    return yaml.safe_dump(data, sort_keys=False)
