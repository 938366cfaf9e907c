"""The compose stack for tests/compose/test_compose_stack.py: brought up with
`docker compose -f compose.yaml -f compose.local.yaml up --wait` on free loopback ports, taken
down with its volumes, and read the way an operator reads it (the broker's retained state as
`operator`, the collector's metrics, Prometheus' API, the containers as the engine shows them).

compose.local.yaml builds every service's image on a local Debian 12 base
(packaging/images/build-compose-base.sh, cached under .cache/images) and puts every container
on host networking with its listeners on 127.0.0.1, on the ports chosen here (an --env-file).
testcontainers' DockerCompose runs it (reaper off, docker_host connection mode, as in
tests/hosts). Without an engine or the compose v2 plugin `running_stack` skips with the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO
from tests.hosts import hostkit  # sets testcontainers' reaper off and docker_host mode

from testcontainers.compose import DockerCompose  # isort: skip  (after hostkit's settings)

FILES = ["compose.yaml", "compose.local.yaml"]
PORTS = ("MQTTS", "MQTT", "NTP", "COLLECTOR", "PROMETHEUS")
# Extra names for the broker's certificate (compose.yaml's CLOCKFLEET_BROKER_NAMES), as for
# agents on other hosts; .test is reserved (RFC 2606), 127.0.0.2 is loopback.
BROKER_NAMES = ("broker.clockfleet.test", "127.0.0.2")


@dataclass
class Stack:
    compose: DockerCompose
    project: str
    ports: dict[str, int]
    workdir: Path
    _operator: tuple[Path, Path] | None = field(default=None, repr=False)

    def docker_compose(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        argv = [*self.compose.compose_command_property, *args]
        return subprocess.run(
            argv,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,  # no terminal: `run` allocates no TTY
        )

    def operator(self) -> tuple[Path, Path]:
        """(password file, CA certificate) of the `operator` identity, from the status
        service's volumes, as docs/compose.md tells an operator to fetch them."""
        if self._operator is None:
            files = []
            for path, name in (
                ("/secrets/operator/password", "password"),
                ("/trust/ca.crt", "ca.crt"),
            ):
                r = self.docker_compose("run", "--rm", "-T", "--entrypoint", "cat", "status", path)
                assert r.returncode == 0 and r.stdout, r.stderr
                out = self.workdir / name
                out.write_text(r.stdout)
                out.chmod(0o600)
                files.append(out)
            self._operator = (files[0], files[1])
        return self._operator

    def broker_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.ports['MQTTS']}"

    def http_json(self, port_name: str, path: str) -> Any:
        url = f"http://127.0.0.1:{self.ports[port_name]}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        url = f"http://127.0.0.1:{self.ports['COLLECTOR']}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }

    def broker_log(self) -> list[str]:
        # Mosquitto logs to a file (broker/mosquitto.conf), in its log volume.
        r = self.docker_compose(
            "exec", "-T", "mosquitto", "cat", "/var/log/mosquitto/mosquitto.log", timeout_s=30
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.splitlines()

    def containers(self) -> list[dict[str, Any]]:
        r = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        ids = r.stdout.split()
        if not ids:
            return []
        r = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, timeout=30)
        return json.loads(r.stdout)


def problem() -> str | None:
    """Why the stack cannot run here (no engine, no compose v2 plugin), or None."""
    engine = hostkit.engine_problem()
    if engine is not None:
        return engine
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if r.returncode != 0:
        why = r.stderr.strip()[:200]
        return f"no docker compose v2 plugin ({why}); tests/hosts/engine.sh installs it"
    return None


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 for both TCP and UDP, outside the kernel's ephemeral range
    (which every outgoing connection on this machine draws its local port from)."""
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = [p for p in range(10000, 65536) if not low <= p <= high]
    random.shuffle(candidates)
    found: list[int] = []
    for port in candidates:
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        found.append(port)
        if len(found) == count:
            return found
    raise AssertionError("no free loopback ports outside the ephemeral range")


def logs(stack: Stack) -> str:
    r = stack.docker_compose("logs", "--no-color", "--tail", "40")
    ps = stack.docker_compose("ps", "-a")
    # Mosquitto logs to a file (broker/mosquitto.conf), in a volume only setup mounts.
    broker = stack.docker_compose(
        "run", "--rm", "--no-deps", "-T", "--entrypoint", "tail", "setup",
        "-n", "20", "/mosquitto-log/mosquitto.log",
    )  # fmt: skip
    return f"{ps.stdout}\n{r.stdout[-6000:]}{r.stderr[-2000:]}\nmosquitto.log:\n{broker.stdout}"


@contextlib.contextmanager
def running_stack() -> Iterator[Stack]:
    """The stack built and up (`up --build --wait`), then down with its volumes; a skip with
    the reason where no engine or compose v2 plugin is."""
    why = problem()
    if why is not None:
        pytest.skip(why)
    started = time.monotonic()
    base = subprocess.run(
        ["sh", str(REPO / "packaging/images/build-compose-base.sh"), str(hostkit.CACHE / "images")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert base.returncode == 0, f"compose base image: {base.stdout[-2000:]}{base.stderr[-3000:]}"
    work = Path(tempfile.mkdtemp(prefix="cf-compose-", dir="/tmp"))
    # One name per checkout, the same on every run: compose labels the images it builds with
    # the project, so a new name per run would leave the previous run's images dangling.
    project = "cf-test-" + hashlib.sha256(str(REPO).encode()).hexdigest()[:8]
    env = work / "stack.env"
    env.write_text(f"COMPOSE_PROJECT_NAME={project}\n")
    compose = DockerCompose(context=REPO, compose_file_name=FILES, env_file=str(env), wait=True)
    s = Stack(compose, project, {}, work)
    # Build first, then choose the ports: the shorter the time between the two, the smaller
    # the chance that something else takes a port meanwhile.
    built = s.docker_compose("build", timeout_s=900)
    assert built.returncode == 0, f"compose build: {built.stdout[-3000:]}{built.stderr[-3000:]}"
    s.ports.update(zip(PORTS, free_ports(len(PORTS))))
    env.write_text(
        f"COMPOSE_PROJECT_NAME={project}\n"
        + "".join(f"CLOCKFLEET_{name}_PORT={port}\n" for name, port in s.ports.items())
        + f"CLOCKFLEET_BROKER_NAMES={','.join(BROKER_NAMES)}\n"
    )
    try:
        try:
            compose.start()
        except subprocess.CalledProcessError as exc:
            pytest.fail(
                f"`up --build --wait` failed: {exc.stderr.decode(errors='replace')[-3000:]}\n"
                + logs(s)
            )
        print(f"\ncompose stack up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield s
    finally:
        s.docker_compose("down", "--volumes", "--remove-orphans")
        shutil.rmtree(work, ignore_errors=True)


def retained(stack: Stack, topics: list[str], count: int, timeout_s: float = 10) -> dict:
    """topic -> decoded payload of the retained messages on `topics`, read as the operator."""
    password, ca = stack.operator()
    got: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        for t in topics:
            client.subscribe(t, qos=0)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.payload:
            got[msg.topic] = json.loads(msg.payload)
        if len(got) >= count:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator")
    client.username_pw_set("operator", password.read_text().strip())
    client.tls_set(ca_certs=str(ca))
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", stack.ports["MQTTS"])
    client.loop_start()
    try:
        done.wait(timeout_s)
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def prometheus_query(stack: Stack, promql: str) -> list[dict[str, Any]]:
    q = urllib.parse.urlencode({"query": promql})
    body = stack.http_json("PROMETHEUS", f"/api/v1/query?{q}")
    assert body["status"] == "success", body
    return body["data"]["result"]
