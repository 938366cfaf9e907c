"""An operator's day on the shipped configuration (issue 20, part 6), one step after another,
as docs/operations.md's "An operator's day" runbook tells it: provision the broker's
identities, install the package on three Debian hosts (11, 12, 13: real systemd), publish, a
canary promoted and one aborted, rotate one host's secret, revoke one, retire two, add one.
After every step /metrics (the collector, its own process) and `clockfleet status` (as the
`operator`) must show what the operator expects.

The broker is broker/mosquitto.conf with its ACL and TLS (the hosts log in over TLS as their
own identities); every program runs as its own role. The NTP servers are the host tests'
chronyd (-x) on loopback. The step titles below are the runbook's, in its order
(tests/test_operations_runbook.py checks the two agree)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clockfleet import devstack
from clockfleet.devstack.mosquitto import (
    IDENTITIES_TOOL,
    ShippedBroker,
    identities_tool,
    login_accepted,
)
from tests.broker.mqttclient import connect
from tests.helpers import REPO, wait_until
from tests.hosts import hostkit
from tests.hosts.stack import Stack, configure

pytestmark = pytest.mark.slow

# The runbook's steps (docs/operations.md, "An operator's day"), in order.
STEPS = (
    "Provision the broker's identities",
    "Install the package and publish",
    "A canary that is promoted",
    "A canary that is aborted",
    "Rotate a host's secret",
    "Revoke a host",
    "Retire hosts",
    "Add a host",
)

REGION = "east"
REFUSED = "broker refused the connection"  # the agent's log line when its login is refused
FIRST = {"pbx-day-1": "bullseye", "pbx-day-2": "bookworm", "pbx-day-3": "trixie"}


def run(argv: list[str], expect: int = 0, timeout_s: float = 120) -> str:
    env = {**os.environ, "CLOCKFLEET_CONNECTION": ""}  # nothing of this machine's own
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    assert r.returncode == expect, f"{shlex.join(argv)}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def identities(broker: ShippedBroker, *args: str) -> dict[str, str]:
    """The identities tool as the runbook runs it on the broker host: secrets on standard
    output (NAME SECRET), the broker's SIGHUP, and back once the new file is in force."""
    pidfile = broker.rundir / "mosquitto.pid"
    pidfile.write_text(f"{broker.daemon.proc.pid}\n")
    reload = ["--reload-pidfile", str(pidfile), "--confirm", broker.url]
    out = identities_tool(broker.identities, *args, "--secrets", "-", *reload)
    pairs = (line.split() for line in out.splitlines())
    return {p[0]: p[1] for p in pairs if len(p) == 2 and p[0].startswith("pbx-")}


def revoke_command(broker: ShippedBroker) -> str:
    pidfile = broker.rundir / "mosquitto.pid"
    return shlex.join(
        [sys.executable, str(IDENTITIES_TOOL), "--out", str(broker.identities),
         "--revoke", "{agent}", "--yes", "--reload-pidfile", str(pidfile), "--confirm", broker.url]
    )  # fmt: skip


class Collector:
    """`clockfleet collector` as its own process and role, scraped as Prometheus would."""

    def __init__(self, broker: ShippedBroker, log: Path) -> None:
        self.port = devstack.stable_ports(1)[0]
        argv = [sys.executable, "-m", "clockfleet", "collector"]
        argv += ["--listen", f"127.0.0.1:{self.port}", *broker.login("collector")]
        self.log = log.open("w")
        env = {**os.environ, "CLOCKFLEET_CONNECTION": ""}
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, env=env, cwd=REPO)
        wait_until(self._serving, 20, "the collector's /metrics")

    def _serving(self) -> bool:
        try:
            return "clockfleet_collector_broker_connected 1.0" in self.text()
        except OSError:
            return False

    def text(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    def by_agent(self, name: str) -> dict[str, float]:
        """One series per agent: agent -> value."""
        return {
            s.labels["agent"]: s.value
            for f in text_string_to_metric_families(self.text())
            for s in f.samples
            if s.name == name and "agent" in s.labels
        }

    def region(self, name: str) -> float | None:
        for f in text_string_to_metric_families(self.text()):
            for s in f.samples:
                if s.name == name and s.labels.get("region") == REGION:
                    return s.value
        return None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


class Day:
    """The broker, the fleet file (a Stack of its own), the hosts and what the operator reads."""

    def __init__(self, stack: Stack, broker: ShippedBroker, work: Path) -> None:
        keys = work / "keys"
        run([sys.executable, "-m", "clockfleet", "keygen", "--out", str(keys), "--key-id", "day"])
        self.fleet = Stack(work, broker, stack.servers, None, keys / "day.key", keys / "day.pub")
        self.fleet.regions[REGION] = [(d.host, d.port) for d in stack.servers]
        self.broker = broker
        self.hosts: dict[str, hostkit.SystemdHost] = {}
        self.collector = Collector(broker, work / "collector.log")

    def status(self) -> dict[str, dict]:
        out = run(
            [sys.executable, "-m", "clockfleet", "status", "--json", *self.broker.login("operator")]
        )
        return {row["agent"]: row for row in json.loads(out)}

    def install(self, host: hostkit.SystemdHost, agent_id: str, secret: str) -> None:
        """What an operator's template does on a new host: the package is in, then its
        password, CA, trust key and agent.yaml (the profile was published before)."""
        host.put("/etc/clockfleet/mqtt-password", secret + "\n", 0o640)
        host.ok("chgrp clockfleet /etc/clockfleet/mqtt-password")
        configure(host, self.fleet, agent_id, region=REGION, publish=False, password=False)
        self.hosts[agent_id] = host

    def place(self, *agents: str) -> None:
        """Name these agents in the fleet file's region (each its own zone) and publish."""
        for agent_id in agents:
            self.fleet.agents[agent_id] = {"region": REGION, "timezone": "Europe/Lisbon"}
        self.fleet.publish()

    def all_report_ok(self, agents: set[str], version: float | None = None) -> None:
        """Every one of `agents`, and no other, reports ok on /metrics (on list `version`)."""
        seen: dict[str, dict[str, float]] = {}

        def done() -> bool:
            seen["ok"] = self.collector.by_agent("clockfleet_agent_last_report_ok")
            seen["list"] = self.collector.by_agent("clockfleet_agent_list_version")
            if set(seen["ok"]) != agents or not all(seen["ok"].values()):
                return False
            return version is None or all(seen["list"].get(a) == version for a in agents)

        try:
            wait_until(done, 90, "reports", step_s=0.5)
        except AssertionError:
            journals = {a: self.hosts[a].journal()[-2000:] for a in agents if a in self.hosts}
            raise AssertionError(
                f"expected {sorted(agents)} ok on list {version}; /metrics had {seen}; "
                f"journals: {journals}"
            ) from None

    def published_version(self) -> float:
        v = self.collector.region("clockfleet_region_list_version")
        assert v is not None
        return v


@pytest.fixture
def day(stack: Stack, tmp_path: Path) -> Iterator[Day]:
    broker = devstack.start_shipped_mosquitto(tmp_path / "broker")
    d = Day(stack, broker, tmp_path)
    try:
        yield d
    finally:
        d.collector.stop()
        broker.stop()


def check_status(day: Day, expect: dict[str, Callable[[dict], bool]]) -> None:
    """`clockfleet status --json` as the operator: exactly these agents, each as expected."""
    seen: dict[str, dict] = {}

    def as_expected() -> bool:
        seen.clear()
        seen.update(day.status())
        return set(seen) == set(expect) and all(expect[a](seen[a]) for a in seen)

    try:
        wait_until(as_expected, 20, "clockfleet status", step_s=0.5)
    except AssertionError:
        raise AssertionError(f"clockfleet status: expected {sorted(expect)}, got {seen}") from None


def healthy(row: dict) -> bool:
    return row["state"] == "online" and row["ok"] is True and not row["behind"]


@pytest.mark.timeout(900)
def test_an_operators_day(day: Day, fresh_host: Callable[..., hostkit.SystemdHost]):
    broker = day.broker

    # 1. Provision the broker's identities: one per host, from the inventory.
    inventory = day.fleet.workdir / "hosts.txt"
    inventory.write_text("".join(f"{a}\n" for a in FIRST))
    secrets = identities(broker, "--agents-file", str(inventory))
    assert set(secrets) == set(FIRST)
    assert all(login_accepted(broker.host, broker.port, a, s) for a, s in secrets.items())
    assert day.collector.by_agent("clockfleet_agent_online") == {}
    check_status(day, {})

    # 2. Install the package and publish: every host reports ok, on the published list.
    day.place(*FIRST)
    for agent_id, suite in FIRST.items():
        day.install(fresh_host(suite), agent_id, secrets[agent_id])
    v1 = day.published_version()
    day.all_report_ok(set(FIRST), v1)
    assert day.collector.region("clockfleet_region_agents") == 3
    check_status(day, {a: healthy for a in FIRST})

    # 3. A canary that is promoted: the servers' order changes, first on the cohort (with three
    # hosts a 100 % cohort: a smaller share is drawn by hash and may be empty, refused).
    day.fleet.regions[REGION].reverse()
    out = day.fleet.publish("--canary", "100%", "--bake", "5").stdout
    assert "promoted" in out, out
    v_promoted = day.published_version()
    assert v_promoted == v1 + 2
    day.all_report_ok(set(FIRST), v_promoted)
    check_status(day, {a: healthy for a in FIRST})

    # 4. A canary that is aborted: a list whose only server never answers fails on the cohort,
    # and the whole region is back on the previous servers.
    good = list(day.fleet.regions[REGION])
    silent = devstack.silent_udp()
    try:
        day.fleet.regions[REGION] = [silent.getsockname()[:2]]
        out = day.fleet.publish("--canary", "100%", "--bake", "60", expect=3).stdout
        assert "aborted" in out, out
    finally:
        silent.close()
    day.fleet.regions[REGION] = good  # the operator puts the file back as it was
    v_aborted = day.published_version()
    assert v_aborted == v_promoted + 2
    day.all_report_ok(set(FIRST), v_aborted)
    day.fleet.publish()  # the file as it was: nothing new to send
    assert day.published_version() == v_aborted
    check_status(day, {a: healthy for a in FIRST})

    # 5. Rotate a host's secret: the old one stops working, the host's agent comes back with
    # the new one after its restart.
    session = day.status()["pbx-day-2"]["session"]
    rotated = identities(broker, "--rotate", "pbx-day-2")["pbx-day-2"]
    assert not login_accepted(broker.host, broker.port, "pbx-day-2", secrets["pbx-day-2"])
    host2 = day.hosts["pbx-day-2"]
    host2.put("/etc/clockfleet/mqtt-password", rotated + "\n", 0o640)
    host2.ok("chgrp clockfleet /etc/clockfleet/mqtt-password && systemctl restart clockfleet-agent")
    back = {**{a: healthy for a in FIRST}}
    back["pbx-day-2"] = lambda r: healthy(r) and r["session"] != session
    check_status(day, back)
    day.all_report_ok(set(FIRST), v_aborted)

    # 6. Revoke a host: its connected agent is disconnected within 5 s and never logs in again.
    host3 = day.hosts["pbx-day-3"]
    refusals = host3.journal().count(REFUSED)
    t0 = time.monotonic()
    identities(broker, "--revoke", "pbx-day-3")
    wait_until(
        lambda: host3.journal().count(REFUSED) > refusals,
        5 - (time.monotonic() - t0),
        "pbx-day-3's agent refused by the broker",
        step_s=0.2,
    )
    assert time.monotonic() - t0 < 5
    assert not login_accepted(broker.host, broker.port, "pbx-day-3", secrets["pbx-day-3"])
    # Closed without its will: its last status and report stay until it is retired.
    assert set(day.collector.by_agent("clockfleet_agent_online")) == set(FIRST)
    last = {**back, "pbx-day-3": lambda r: r["list_version"] == v_aborted}
    check_status(day, last)

    # 7. Retire hosts: pbx-day-1 is decommissioned (its agent stopped first), pbx-day-3 was
    # revoked already (--no-revoke). Each is gone from /metrics within 10 s, its retained
    # topics are empty and it cannot log in; the fleet file drops them (--prune).
    retire_as = broker.login("retire")
    day.hosts["pbx-day-1"].ok("systemctl stop clockfleet-agent")
    host3.ok("systemctl stop clockfleet-agent")
    for agent_id, how in (("pbx-day-1", ["--revoke-command", revoke_command(broker)]),
                          ("pbx-day-3", ["--no-revoke"])):  # fmt: skip
        t0 = time.monotonic()
        run([sys.executable, "-m", "clockfleet", "retire", agent_id, *how, *retire_as])
        wait_until(
            lambda a=agent_id: a not in day.collector.by_agent("clockfleet_agent_online"),
            10 - (time.monotonic() - t0),
            f"{agent_id} gone from /metrics",
        )
        assert time.monotonic() - t0 < 10
        assert not login_accepted(broker.host, broker.port, agent_id, secrets[agent_id])
        day.fleet.agents.pop(agent_id)
    assert retained_under(broker, ("pbx-day-1", "pbx-day-3")) == []
    day.fleet.publish("--prune")
    assert day.collector.region("clockfleet_region_agents") == 1
    check_status(day, {"pbx-day-2": healthy})

    # 8. Add a host: provisioned from a new inventory, its profile published, the package
    # installed; it reports beside the one that stayed.
    new = day.fleet.workdir / "new-hosts.txt"
    new.write_text("pbx-day-4\n")
    secret4 = identities(broker, "--agents-file", str(new))["pbx-day-4"]
    day.place("pbx-day-4")
    day.install(fresh_host("bookworm"), "pbx-day-4", secret4)
    day.all_report_ok({"pbx-day-2", "pbx-day-4"}, day.published_version())
    assert day.collector.region("clockfleet_region_agents") == 2
    check_status(day, {"pbx-day-2": healthy, "pbx-day-4": healthy})


def retained_under(broker: ShippedBroker, agents: tuple[str, ...]) -> list[str]:
    """The retained status and report topics a fresh reader (the operator) gets for these
    agents (its own cmd topic write, read back, marks the end of the retained snapshot)."""
    reader = connect(broker.port, "operator", broker.password("operator"))
    try:
        kinds = ("status", "report")
        reader.subscribe(*(f"clock/v1/agents/{a}/{k}" for a in agents for k in kinds))
        reader.subscribe("clock/v1/agents/day-witness/cmd")
        reader.sync("clock/v1/agents/day-witness/cmd")
        return sorted(m.topic for m in reader.messages if m.retain and m.payload)
    finally:
        reader.close()
