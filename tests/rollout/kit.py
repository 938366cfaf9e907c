"""The rollout tests' parts: a counting UDP relay in front of a silent socket, a region of
agents on a real Mosquitto, and `clockfleet publish` / `clockfleet rollout` as commands."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.agent.service import Agent
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.devstack.topologies import Topology
from clockfleet.protocol import rollout
from tests.agent.servicekit import Keys

# The state file's record: versions above any date floor, so a change's id (and so its
# cohort) is known before it is published, and the test can name a region with exactly
# the cohort the example has.
BASE_VERSION = 9_000_000_000


class CountingRelay:
    """Forwards NTP queries to `upstream` and remembers every sender (address, port).

    In front of a silent socket it answers nothing: it only counts who asked. A probe sends
    its samples from one socket per server, so each distinct sender is one agent's query."""

    def __init__(self, upstream: tuple[str, int], listen: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((listen, 0))
        self.sock.settimeout(0.2)
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream = upstream
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.packets = 0
        self.senders: set[tuple[str, int]] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(2048)
            except OSError:
                continue
            self.packets += 1
            self.senders.add(addr)
            self.up.sendto(data, self.upstream)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        self.up.close()


def silent_socket() -> socket.socket:
    """The one fake: an NTP server that never answers (a bound UDP socket nobody reads)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


def fleet_yaml(
    keys_dir: Path,
    servers: list[tuple[str, int]],
    extra: str = "",
    agents: Sequence[str] = (),
    timezone: str = "UTC",
) -> str:
    """Region r1 with `servers` and default zone `timezone`; `agents` placed in it without a
    zone of their own (a canary is judged by them only)."""
    listed = ", ".join(f"{{host: {h}, port: {p}}}" for h, p in servers)
    placed = "".join(f"  {a}: {{region: r1}}\n" for a in agents)
    return (
        f"signing_key: {keys_dir / 'ops-test.key'}\n"
        "defaults: {poll_interval_s: 3600, resync_jitter_s: 0}\n"
        f"{extra}"
        f"regions:\n  r1:\n    timezone: {timezone}\n    servers: [{listed}]\n"
        + (f"agents:\n{placed}" if agents else "")
    )


def change_id_for(version: int, servers: list[tuple[str, int]]) -> str:
    digest = rollout.list_digest(servers)
    return f"c{version}-{digest[:8]}"


def agent_ids(change: str, percent: float, total: int, in_cohort: int) -> list[str]:
    """`total` agent ids of which exactly `in_cohort` are in `change`'s cohort."""
    inside: list[str] = []
    outside: list[str] = []
    n = 0
    while len(inside) < in_cohort or len(outside) < total - in_cohort:
        aid = f"pbx-{n:03d}"
        n += 1
        if rollout.in_cohort(change, aid, percent):
            if len(inside) < in_cohort:
                inside.append(aid)
        elif len(outside) < total - in_cohort:
            outside.append(aid)
    return sorted(inside + outside)


@dataclass
class Region:
    """A signed region r1 on the shipped broker: `clockfleet publish` and `rollout run |
    promote | abort` run as `publisher`, `rollout status` as `operator`, as the README says."""

    rundir: Path
    broker: ShippedBroker | Topology
    keys: Keys
    agents: list[Agent] = field(default_factory=list)
    placed: list[str] = field(default_factory=list)  # agents the fleet file places in r1

    @property
    def fleet_file(self) -> Path:
        return self.rundir / "fleet.yaml"

    def write(self, servers: list[tuple[str, int]], extra: str = "", timezone: str = "UTC") -> None:
        text = fleet_yaml(self.rundir / "keys", servers, extra, self.placed, timezone)
        self.fleet_file.write_text(text)

    def seed_versions(self, version: int = BASE_VERSION) -> None:
        state = {"format": 1, "prefixes": {"clock/v1": {"region": {"r1": version}}}}
        (self.rundir / ".publisher-state.json").write_text(json.dumps(state))

    def command(self, *args: str, identity: str = "publisher") -> list[str]:
        return [sys.executable, "-m", "clockfleet", *args, *self.broker.login(identity)]

    def publish(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        # These canaries try silent servers on purpose, and relays count who asks a server:
        # the publisher's preflight must not (tests/publisher/test_preflight.py covers it).
        cmd = self.command("publish", "--config", str(self.fleet_file), "--no-preflight", *args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def rollout(
        self, *args: str, identity: str = "publisher", timeout: float = 60
    ) -> subprocess.CompletedProcess:
        cmd = self.command("rollout", *args, "--config", str(self.fleet_file), identity=identity)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def broker_payload(self, topic: str, timeout_s: float = 10.0) -> bytes:
        """The retained payload of `topic`, read as `operator` (who may read everything)."""
        got: list[bytes] = []
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="operator")
        client.username_pw_set("operator", self.broker.password("operator"))
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, 0)
        client.on_message = lambda c, u, m: got.append(m.payload)
        client.connect(self.broker.host, self.broker.port)
        client.loop_start()
        try:
            deadline = time.monotonic() + timeout_s
            while not got and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            client.disconnect()
            client.loop_stop()
        assert got, f"no retained message on {topic}"
        return got[0]

    def status(self) -> dict:
        done = self.rollout("status", "--json", identity="operator")
        assert done.returncode == 0, done.stderr
        [row] = [r for r in json.loads(done.stdout)["regions"] if r["region"] == "r1"]
        return row

    def digests(self) -> set[str | None]:
        return {a.last_report.list_digest if a.last_report else None for a in self.agents}

    def versions(self) -> set[int | None]:
        return {a.last_report.list_version if a.last_report else None for a in self.agents}
