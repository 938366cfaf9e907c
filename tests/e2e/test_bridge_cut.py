"""Data-centre edge bridges under failure: central cut from an edge, nothing lost.

Central and two edges as broker/bridges/make-bridges writes them (devstack bridges.py:
generated configs with only ports and paths replaced, identities from
broker/clockfleet-identities, TLS bridges); `clockfleet publish` on central as `publisher`,
real agents (observe backend, real chronyd servers) on edge dc1 each as its own identity over
TLS, the real collector on central as `collector`. The link is cut by the relay in the
bridge's path (both brokers keep running, so central can change things meanwhile) or by
SIGKILLing central.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from clockfleet.agent.fleet import Fleet
from clockfleet.agent.service import Agent
from clockfleet.devstack import bridges
from clockfleet.protocol.connection import ConnectionSettings
from tests.agent.servicekit import Keys, make_agent, make_keys
from tests.broker.mqttclient import MqttProbe, connect
from tests.collector.kit import RunningCollector
from tests.helpers import wait_until

EDGE = 0  # every agent of these tests lives behind edge dc1
AGENTS = ["pbx-01", "pbx-02", "pbx-03"]
# A host of dc1 that is off during these tests, with a profile (America/Chicago) that is
# withdrawn during a cut: what the edge serves it when it comes back is what it would apply.
# It also reads the edge's retained list (any agent may read every region's list).
PROFILED = "pbx-09"
REGION = "us-east"


def fleet_yaml(servers: list[tuple[str, int]], *, profile: bool) -> str:
    listed = ", ".join(f"{{host: {h}, port: {p}}}" for h, p in servers)
    text = (
        "defaults: {poll_interval_s: 3600, resync_jitter_s: 0}\n"
        "regions:\n"
        f"  {REGION}:\n"
        "    timezone: America/New_York\n"
        f"    servers: [{listed}]\n"
    )
    if profile:
        text += f"agents:\n  {PROFILED}: {{region: {REGION}, timezone: America/Chicago}}\n"
    return text


def login(settings: ConnectionSettings) -> MqttProbe:
    b = settings.brokers[0]
    return connect(
        b.port, settings.username, settings.password, host=b.host, ca_file=settings.ca_file,
        protocol=mqtt.MQTTv311,
    )  # fmt: skip


def retained(reader: ConnectionSettings, topic: str) -> bytes | None:
    """The retained payload of `topic` as `reader` gets it, None when the broker holds none."""
    probe = login(reader)
    try:
        probe.subscribe(topic, qos=1)
        # Mosquitto queues a subscription's retained message while it handles the SUBSCRIBE:
        # the SUBACK of a second one comes after it (needs no right beyond reading `topic`).
        probe.subscribe(topic, qos=1)
        got = probe.on(topic)
    finally:
        probe.close()
    return got[0].payload if got and got[0].payload else None


def list_version(reader: ConnectionSettings) -> int | None:
    payload = retained(reader, f"clock/v1/regions/{REGION}/servers")
    return None if payload is None else json.loads(payload)["version"]


@dataclass
class Site:
    topo: bridges.CentralAndEdges
    rundir: Path
    key: Path
    keys: Keys
    servers: list[tuple[str, int]]
    collector: RunningCollector
    fleet: Fleet
    agents: list[Agent]

    def publish(self, servers: list[tuple[str, int]], *, profile: bool) -> None:
        path = self.rundir / "fleet.yaml"
        path.write_text(fleet_yaml(servers, profile=profile))
        done = subprocess.run(
            [
                sys.executable, "-m", "clockfleet", "publish", "--config", str(path), "--prune",
                "--signing-key", str(self.key), *self.topo.login("publisher"),
                "--force",  # the preflight reports, never blocks: servers may be edge-only
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def add_agent(self, agent_id: str) -> Agent:
        """An agent of dc1, provisioned on its edge (SIGHUP) if it is new there."""
        agent = make_agent(self.topo.edge(EDGE), agent_id, region=REGION, keys=self.keys)
        self.agents.append(agent)
        self.fleet.add(agent)
        return agent

    def collector_version(self, agent_id: str) -> int | None:
        entry = self.collector.state.agents.get(agent_id)
        report = getattr(entry, "report", None)
        return report.list_version if report is not None and report.ok else None

    def everyone_on(self, version: int, agents: list[Agent]) -> bool:
        return all(
            a.last_report is not None and a.last_report.ok and a.last_report.list_version == version
            for a in agents
        )

    @property
    def on_edge(self) -> ConnectionSettings:
        """Reads the edge's retained state as a host of dc1 that is not running."""
        return self.topo.edge(EDGE).settings(PROFILED)

    @property
    def on_central(self) -> ConnectionSettings:
        """Reads central's retained state: collector-2 reads lists, profiles and reports."""
        return self.topo.settings("collector-2")


@pytest.fixture
def site(chrony_server, short_tmp: Path) -> Iterator[Site]:
    rundir = Path(tempfile.mkdtemp(prefix="cf-cut-", dir="/tmp"))
    topo = bridges.start_central_and_edges(rundir, edges=2, agents=[*AGENTS, PROFILED])
    fleet = Fleet(workers=2)
    collector = None
    try:
        keys = make_keys(short_tmp / "keys")
        servers = [(s.host, s.port) for s in (chrony_server(), chrony_server())]
        collector = RunningCollector(topo, "collector")
        wait_until(lambda: collector.collector.connected, what="collector subscribed")
        s = Site(
            topo, rundir, short_tmp / "keys" / "ops-test.key", keys, servers, collector, fleet, []
        )
        for aid in AGENTS:
            s.add_agent(aid)
        fleet.start()
        s.publish(servers, profile=True)
        wait_until(lambda: all(s.collector_version(a) for a in AGENTS), timeout_s=30)
        yield s
    finally:
        fleet.stop(timeout_s=3.0)
        if collector is not None:
            collector.stop()
        topo.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def test_changes_and_a_profile_deletion_made_during_a_cut_reach_the_edge_after_it(site: Site):
    first = list_version(site.on_edge)
    profile_topic = f"clock/v1/agents/{PROFILED}/profile"
    assert first is not None and retained(site.on_edge, profile_topic) is not None
    site.topo.cut(EDGE)
    site.topo.wait_bridges(up=False, only=[EDGE])
    site.publish(list(reversed(site.servers)), profile=False)  # a change and a deletion
    changed = list_version(site.on_central)
    assert changed is not None and changed > first
    assert list_version(site.on_edge) == first  # the cut is real: nothing crossed yet
    site.topo.restore(EDGE)
    wait_until(
        lambda: site.everyone_on(changed, site.agents), timeout_s=60, what="agents on the change"
    )
    wait_until(
        lambda: retained(site.on_edge, profile_topic) is None,
        timeout_s=30,
        what="the deleted profile gone from the edge",
    )
    assert list_version(site.on_edge) == changed


def test_agents_keep_syncing_during_a_cut_and_their_reports_reach_the_collector(site: Site):
    version = list_version(site.on_edge)
    site.topo.cut(EDGE)
    site.topo.wait_bridges(up=False, only=[EDGE])
    newcomer = site.add_agent("pbx-04")  # starts during the cut: only the edge can serve it
    wait_until(
        lambda: newcomer.last_report is not None and newcomer.last_report.ok,
        timeout_s=30,
        what="a good sync from the edge's retained list during the cut",
    )
    assert newcomer.last_report.list_version == version  # type: ignore[union-attr]
    assert site.collector_version("pbx-04") is None  # held at the edge while cut
    site.topo.restore(EDGE)
    wait_until(lambda: site.collector_version("pbx-04") == version, timeout_s=60)


def test_reports_made_while_central_is_down_reach_the_collector_after_its_restart(site: Site):
    version = list_version(site.on_edge)
    site.topo.kill_central()
    # Nobody can read a dead central's bridge states: the edge's link is gone, by the relay.
    wait_until(lambda: not site.topo.proxies[EDGE].linked, what="the edge's link dropped")
    newcomer = site.add_agent("pbx-05")
    wait_until(
        lambda: newcomer.last_report is not None and newcomer.last_report.ok,
        timeout_s=30,
        what="a good sync from the edge while central is dead",
    )
    site.topo.restart_central()
    wait_until(lambda: site.collector_version("pbx-05") == version, timeout_s=60)
    assert all(site.collector_version(a) == version for a in AGENTS)


def test_an_edge_restarted_with_a_stale_list_never_rolls_central_back(site: Site):
    topo = site.topo
    stale = list_version(site.on_edge)
    topo.cut(EDGE)
    topo.wait_bridges(up=False, only=[EDGE])
    site.publish(list(reversed(site.servers)), profile=True)
    newer = list_version(site.on_central)
    assert newer is not None and stale is not None and newer > stale
    # The edge goes down holding the stale list (persisted at shutdown) and comes back with it.
    topo.edge(EDGE).stop()
    topic = f"clock/v1/regions/{REGION}/servers"
    watcher = login(site.on_central)
    try:
        watcher.subscribe(topic, qos=1)
        topo.edge(EDGE).restart()
        assert list_version(site.on_edge) == stale  # it really serves the stale list
        topo.restore(EDGE)
        topo.wait_bridges(up=True, only=[EDGE])
        wait_until(lambda: list_version(site.on_edge) == newer, timeout_s=30)
        seen = [json.loads(m.payload)["version"] for m in watcher.on(topic) if m.payload]
    finally:
        watcher.close()
    assert seen and min(seen) == newer  # central only ever held the newer list
    assert list_version(site.on_central) == newer
