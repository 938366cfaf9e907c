"""The loopback stack the host tests share (broker, NTP servers, publisher) and how a test
configures a host as an operator would. Fixtures are in conftest.py.

The broker runs broker/mosquitto.conf as shipped: each host's agent logs in over TLS as its
own identity with the broker's CA, as on a real PBX; the publisher runs as `publisher`."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker
from tests.hosts import hostkit

REPO_UNIT = hostkit.REPO / "agent" / "clockfleet-agent.service"


TIMEZONES = itertools.cycle(
    ["America/Chicago", "Asia/Kolkata", "Europe/Lisbon", "Pacific/Auckland"]
)


@dataclass
class Stack:
    """Broker, NTP servers and publisher on loopback, shared by every host test."""

    workdir: Path
    broker: ShippedBroker
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
        """Where the hosts' agents connect: the TLS listener (localhost is in its names)."""
        return self.broker.tls_url

    def add_agent(self, agent_id: str, region: str = "hosts") -> str:
        """Give `agent_id` a signed profile (region and its own time zone); returns the zone."""
        tz = next(TIMEZONES)
        self.agents[agent_id] = {"region": region, "timezone": tz}
        self.publish()
        return tz

    def publish(self, *flags: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
        """`clockfleet publish` of the fleet file as the `publisher` (FLAGS: --canary, --prune);
        fails the test unless it exits `expect`."""
        fleet = {
            "defaults": {"poll_interval_s": 16, "resync_jitter_s": 0},
            "regions": {
                name: {
                    "timezone": "UTC",
                    # (host, port), or a whole entry (an NTS server: test_nts_systemd.py)
                    "servers": [
                        s if isinstance(s, dict) else {"host": s[0], "port": s[1]} for s in servers
                    ],
                }
                for name, servers in self.regions.items()
            },
            "agents": self.agents,
        }
        path = self.workdir / "fleet.yaml"
        path.write_text(json.dumps(fleet, indent=1))
        argv = [sys.executable, "-m", "clockfleet", "publish", "--config", str(path)]
        argv += ["--signing-key", str(self.key), *self.broker.login("publisher")]
        # The NTP servers sit on the hosts' networks, as a PBX's may: not this host's.
        argv += ["--no-preflight", *flags]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=180)
        assert r.returncode == expect, r.stdout + r.stderr
        return r

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
        self.broker.restart()

    def sessions(self, agent_id: str) -> list[int]:
        with self.lock:
            return [s["session"] for s in self.statuses.get(agent_id, []) if "session" in s]


def put_password(host: hostkit.SystemdHost, stack: Stack, agent_id: str) -> None:
    """The agent's own identity's password, as the operator hands it to that host only."""
    host.put("/etc/clockfleet/mqtt-password", stack.broker.password(agent_id) + "\n", 0o640)
    host.ok("chgrp clockfleet /etc/clockfleet/mqtt-password")


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
        put_password(host, stack, agent_id)
    host.put("/etc/clockfleet/ca.pem", stack.broker.ca_file.read_bytes(), 0o644)
    host.put(f"/etc/clockfleet/trust/{stack.pub.name}", stack.pub.read_bytes(), trust_mode)
    extra = {"ca_file": "/etc/clockfleet/ca.pem", **(extra or {})}
    text = hostkit.agent_yaml(agent_id, stack.url, region=region, backend=backend, extra=extra)
    host.put("/etc/clockfleet/agent.yaml.new", text, 0o640)
    # As an editor or configuration management does: the complete file appears at once.
    host.ok(
        "chgrp clockfleet /etc/clockfleet/agent.yaml.new && "
        "mv /etc/clockfleet/agent.yaml.new /etc/clockfleet/agent.yaml"
    )
    return tz
