"""Data-centre edge bridges under failure: central cut from an edge, nothing lost.

Central and two edges from broker/bridges/make-bridges' blocks (devstack
clockfleet.bridges); `clockfleet publish` on central, real agents (observe backend, real
chronyd servers) on edge dc1, the real collector on central. The link is cut by the relay
in the bridge's path (both brokers keep running, so central can change things meanwhile) or
by SIGKILLing central.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import bridges, devstack
from clockfleet.agent.fleet import Fleet
from clockfleet.agent.service import Agent
from tests.agent.servicekit import Keys, make_agent, make_keys
from tests.collector.kit import RunningCollector
from tests.helpers import wait_until

EDGE = 0  # every agent of these tests lives behind edge dc1
AGENTS = ["pbx-01", "pbx-02", "pbx-03"]
PROFILED = "pbx-03"  # has a profile (America/Chicago), withdrawn during the cut
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


def retained(url: str, topic: str, timeout_s: float = 2.0) -> bytes | None:
    """The retained payload of `topic` on a broker, None when it holds none."""
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    got: dict[str, bytes] = {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)

    def on_connect(client, userdata, flags, rc, props):
        client.subscribe(topic, qos=1)
        client.subscribe(bridges.SENTINEL, qos=1)
        client.publish(bridges.SENTINEL, b"", qos=1)

    def on_message(client, userdata, msg):
        got.setdefault(msg.topic, msg.payload)

    c.on_connect, c.on_message = on_connect, on_message
    c.connect(host, int(port))
    c.loop_start()
    try:
        wait_until(lambda: bridges.SENTINEL in got, timeout_s=timeout_s, what="snapshot end")
    finally:
        c.disconnect()
        c.loop_stop()
    return got.get(topic) or None


def list_version(url: str) -> int | None:
    payload = retained(url, f"clock/v1/regions/{REGION}/servers")
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
                "--signing-key", str(self.key), "--broker", self.topo.publisher_url,
                "--force",  # the preflight reports, never blocks: servers may be edge-only
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def add_agent(self, agent_id: str) -> Agent:
        agent = make_agent(self.topo.edge_url(EDGE), agent_id, region=REGION, keys=self.keys)
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
    def edge_url(self) -> str:
        return self.topo.edge_url(EDGE)


@pytest.fixture
def site(chrony_server, short_tmp: Path) -> Iterator[Site]:
    rundir = Path(tempfile.mkdtemp(prefix="cf-cut-", dir="/tmp"))
    topo = bridges.start_central_and_edges(rundir, edges=2)
    fleet = Fleet(workers=2)
    collector = None
    try:
        keys = make_keys(short_tmp / "keys")
        servers = [(s.host, s.port) for s in (chrony_server(), chrony_server())]
        collector = RunningCollector(topo.collector_url)
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


def test_changes_and_a_profile_deletion_made_during_a_cut_reach_the_edge_after_it(site: Site):
    first = list_version(site.edge_url)
    profile_topic = f"clock/v1/agents/{PROFILED}/profile"
    assert first is not None and retained(site.edge_url, profile_topic) is not None
    site.topo.cut(EDGE)
    site.topo.wait_bridges(up=False, only=[EDGE])
    site.publish(list(reversed(site.servers)), profile=False)  # a change and a deletion
    changed = list_version(site.topo.central_url)
    assert changed is not None and changed > first
    assert list_version(site.edge_url) == first  # the cut is real: nothing crossed yet
    site.topo.restore(EDGE)
    wait_until(
        lambda: site.everyone_on(changed, site.agents), timeout_s=60, what="agents on the change"
    )
    wait_until(
        lambda: retained(site.edge_url, profile_topic) is None,
        timeout_s=30,
        what="the deleted profile gone from the edge",
    )
    assert list_version(site.edge_url) == changed


def test_agents_keep_syncing_during_a_cut_and_their_reports_reach_the_collector(site: Site):
    version = list_version(site.edge_url)
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
    version = list_version(site.edge_url)
    site.topo.kill_central()
    site.topo.wait_bridges(up=False, only=[EDGE])
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
    stale = list_version(site.edge_url)
    topo.cut(EDGE)
    topo.wait_bridges(up=False, only=[EDGE])
    site.publish(list(reversed(site.servers)), profile=True)
    newer = list_version(topo.central_url)
    assert newer is not None and stale is not None and newer > stale
    # The edge goes down holding the stale list (persisted at shutdown) and comes back with it.
    topo.edges[EDGE].stop()
    seen: list[int] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    watcher.on_message = lambda c, u, m: m.payload and seen.append(json.loads(m.payload)["version"])
    watcher.connect(topo.central.host, topo.central.port)
    watcher.subscribe(f"clock/v1/regions/{REGION}/servers", qos=1)
    watcher.loop_start()
    try:
        topo.edges[EDGE] = devstack.restart(topo.edges[EDGE])
        assert list_version(site.edge_url) == stale  # it really serves the stale list
        topo.restore(EDGE)
        topo.wait_bridges(up=True, only=[EDGE])
        wait_until(lambda: list_version(site.edge_url) == newer, timeout_s=30)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert seen and min(seen) == newer  # central only ever held the newer list
    assert list_version(topo.central_url) == newer
