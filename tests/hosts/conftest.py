"""Fixtures for the agent package under real systemd (Debian 11/12/13 containers).

- `engine`: the Docker engine, or a skip that says why not (pytest -rs prints it).
- `stack` (session): on this machine's loopback, Mosquitto, chronyd NTP servers (-x), a
  signing key and the real publisher (`clockfleet publish`); a subscriber that collects every
  agent's retained report.
- `debs` (session, per suite): the package built from this checkout (and a later version of
  it, for the upgrade test).
- `fresh_host(suite)`: a new systemd container of that suite, stopped after the test's module.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import devstack
from tests.helpers import next_loopback_address
from tests.hosts import hostkit

REPO_UNIT = hostkit.REPO / "agent" / "clockfleet-agent.service"
TIMEZONES = itertools.cycle(
    ["America/Chicago", "Asia/Kolkata", "Europe/Lisbon", "Pacific/Auckland"]
)


@pytest.fixture(scope="session")
def engine() -> None:
    problem = hostkit.engine_problem()
    if problem is not None:
        pytest.skip(problem)


@dataclass
class Stack:
    """Broker, NTP servers and publisher on loopback, shared by every host test."""

    workdir: Path
    broker: devstack.Daemon
    servers: list[devstack.Daemon]
    port123: devstack.Daemon | None  # for timesyncd, which only speaks to port 123
    key: Path
    pub: Path
    regions: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    agents: dict[str, dict[str, str]] = field(default_factory=dict)
    reports: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    statuses: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"mqtt://{self.broker.host}:{self.broker.port}"

    def add_agent(self, agent_id: str, region: str = "hosts") -> str:
        """Give `agent_id` a signed profile (region and its own time zone); returns the zone."""
        tz = next(TIMEZONES)
        self.agents[agent_id] = {"region": region, "timezone": tz}
        self.publish()
        return tz

    def publish(self) -> None:
        fleet = {
            "defaults": {"poll_interval_s": 16, "resync_jitter_s": 0},
            "regions": {
                name: {
                    "timezone": "UTC",
                    "servers": [{"host": h, "port": p} for h, p in servers],
                }
                for name, servers in self.regions.items()
            },
            "agents": self.agents,
        }
        path = self.workdir / "fleet.yaml"
        path.write_text(json.dumps(fleet, indent=1))
        argv = [sys.executable, "-m", "clockfleet", "publish", "--config", str(path)]
        argv += ["--signing-key", str(self.key), "--broker", self.url]
        # The NTP servers sit on the hosts' networks, as a PBX's may: not this host's.
        argv += ["--no-preflight"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr

    def on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 5 or not msg.payload:
            return
        with self.lock:
            box = self.reports if parts[4] == "report" else self.statuses
            box.setdefault(parts[3], []).append(json.loads(msg.payload))

    def report(
        self, agent_id: str, predicate: Callable[[dict[str, Any]], bool] = lambda r: True
    ) -> dict[str, Any] | None:
        with self.lock:
            for r in reversed(self.reports.get(agent_id, [])):
                if predicate(r):
                    return r
        return None

    def wait_report(
        self,
        agent_id: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda r: True,
        timeout_s: float = 30,
        host: hostkit.SystemdHost | None = None,
    ) -> dict[str, Any]:
        try:
            return hostkit.wait_for(
                lambda: self.report(agent_id, predicate), timeout_s, f"a report from {agent_id}"
            )
        except hostkit.HostError as exc:
            journal = host.journal()[-3000:] if host else ""
            raise hostkit.HostError(
                f"{exc}; reports: {self.reports.get(agent_id)}\n{journal}"
            ) from None

    def restart_broker(self) -> None:
        """Start the stopped broker again on its port (its retained lists persisted)."""
        self.broker = devstack.restart(self.broker)

    def sessions(self, agent_id: str) -> list[int]:
        with self.lock:
            return [s["session"] for s in self.statuses.get(agent_id, []) if "session" in s]


def _subscribe(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
    # On every (re)connect: a clean session forgets its subscriptions.
    client.subscribe("clock/v1/agents/+/report", qos=0)
    client.subscribe("clock/v1/agents/+/status", qos=0)


@pytest.fixture(scope="session")
def stack(engine: None) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="cf-hosts-", dir="/tmp"))
    started: list[devstack.Daemon] = []
    try:
        broker = devstack.start_mosquitto(work / "mosquitto")
        started.append(broker)
        servers = []
        for n in range(2):
            d = devstack.start_chronyd_server(work / f"ntp{n}", address=next_loopback_address())
            started.append(d)
            servers.append(d)
        port123 = None
        if devstack.is_root():
            port123 = devstack.start_chronyd_server(
                work / "ntp123", address=next_loopback_address(), port=123
            )
            started.append(port123)
        keys = work / "keys"
        keygen = ["keygen", "--out", str(keys), "--key-id", "ops-hosts"]
        r = subprocess.run(
            [sys.executable, "-m", "clockfleet", *keygen],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        s = Stack(work, broker, servers, port123, keys / "ops-hosts.key", keys / "ops-hosts.pub")
        s.regions["hosts"] = [(d.host, d.port) for d in servers]
        if port123 is not None:
            s.regions["hosts123"] = [(port123.host, port123.port)]
        s.publish()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="cf-hosts-watch")
        sub.on_message = s.on_message
        sub.on_connect = _subscribe
        # The broker-down test restarts the broker: be back within a second, not paho's 120 s.
        sub.reconnect_delay_set(0.2, 1)
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        try:
            yield s
        finally:
            sub.loop_stop()
            sub.disconnect()
            started.append(s.broker)  # a restarted broker is a new process
    finally:
        for d in started:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """debs(suite, version=None) -> the package for that suite, built once per session.

    Needs no engine: the package's own checks (contents, lintian) run everywhere."""
    out = tmp_path_factory.mktemp("debs")
    built: dict[tuple[str, str | None], Path] = {}

    def get(suite: str, version: str | None = None) -> Path:
        if (suite, version) not in built:
            built[(suite, version)] = hostkit.build_deb(suite, out, version)
        return built[(suite, version)]

    return get


@pytest.fixture(scope="session")
def images(engine: None) -> Callable[[str], str]:
    built: dict[str, str] = {}

    def get(suite: str) -> str:
        if suite not in built:
            built[suite] = hostkit.build_image(suite)
        return built[suite]

    return get


def configure(
    host: hostkit.SystemdHost,
    stack: Stack,
    agent_id: str,
    *,
    region: str = "hosts",
    backend: str = "observe",
    extra: dict[str, Any] | None = None,
    publish: bool = True,
    password: bool = True,
    trust_mode: int = 0o644,
) -> str:
    """Write this host's secrets and agent.yaml as an operator would; returns its zone.

    publish False: the profile was published before (the broker may be down now).
    """
    tz = stack.add_agent(agent_id, region) if publish else stack.agents[agent_id]["timezone"]
    if password:
        host.put("/etc/clockfleet/mqtt-password", "not-checked-by-the-test-broker\n", 0o640)
        host.ok("chgrp clockfleet /etc/clockfleet/mqtt-password")
    host.put("/etc/clockfleet/trust/ops-hosts.pub", stack.pub.read_bytes(), trust_mode)
    text = hostkit.agent_yaml(agent_id, stack.url, region=region, backend=backend, extra=extra)
    host.put("/etc/clockfleet/agent.yaml.new", text, 0o640)
    # As an editor or configuration management does: the complete file appears at once.
    host.ok(
        "chgrp clockfleet /etc/clockfleet/agent.yaml.new && "
        "mv /etc/clockfleet/agent.yaml.new /etc/clockfleet/agent.yaml"
    )
    return tz


@pytest.fixture
def fresh_host(
    images: Callable[[str], str], debs: Callable[..., Path]
) -> Iterator[Callable[..., hostkit.SystemdHost]]:
    """fresh_host(suite, install=True) -> a new booted container, the package installed."""
    started: list[hostkit.SystemdHost] = []

    def boot(suite: str, install: bool = True) -> hostkit.SystemdHost:
        h = hostkit.SystemdHost(images(suite), suite)
        started.append(h)
        h.start()
        if install:
            h.install(debs(suite))
        return h

    yield boot
    for h in started:
        h.stop()
