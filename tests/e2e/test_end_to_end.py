"""The whole chain on every broker topology: `clockfleet publish` (the real command) ->
broker -> agents (real chronyd servers) -> broker -> collector -> a real Prometheus.

The same test runs on one Mosquitto, on a 3-node NATS cluster and on a central Mosquitto
with two edge bridges (devstack/clockfleet/devstack/topologies.py), each running its shipped
configuration with every program on its own identity."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clockfleet.agent.fleet import Fleet
from clockfleet.agent.service import Agent
from clockfleet.devstack.topologies import STARTERS, Topology, start
from tests.agent.servicekit import Keys, make_agent, make_keys
from tests.collector.kit import Prometheus, RunningCollector
from tests.helpers import wait_until

AGENTS = [("pbx-01", "us-east"), ("pbx-02", "us-east"), ("pbx-03", "eu-west")]
AGENTS += [("pbx-04", "eu-west"), ("pbx-05", "us-east"), ("pbx-06", "eu-west")]
FLEET = """\
defaults: {{poll_interval_s: 3600, resync_jitter_s: 0}}
regions:
  us-east:
    timezone: America/New_York
    servers: [{servers}]
  eu-west:
    timezone: Europe/Dublin
    servers: [{servers}]
"""


def fleet_yaml(servers: list[tuple[str, int]]) -> str:
    return FLEET.format(servers=", ".join(f"{{host: {h}, port: {p}}}" for h, p in servers))


@dataclass
class Chain:
    topology: Topology
    rundir: Path
    keys: Keys
    private_key: Path
    agents: list[Agent]
    fleet: Fleet
    collector: RunningCollector
    prometheus: Prometheus
    servers: list[tuple[str, int]]

    def publish(self, servers: list[tuple[str, int]]) -> None:
        path = self.rundir / "fleet.yaml"
        path.write_text(fleet_yaml(servers))
        done = subprocess.run(
            [
                sys.executable, "-m", "clockfleet", "publish", "--config", str(path),
                "--signing-key", str(self.private_key), *self.topology.login("publisher"),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def versions_at_collector(self) -> set[int]:
        agents = self.collector.state.agents
        return {
            a.report.list_version
            for a in agents.values()
            if getattr(a, "report", None) is not None and a.report.ok
        }


@pytest.fixture(scope="module", params=sorted(STARTERS))
def topology(request) -> Iterator[Topology]:
    rundir = Path(tempfile.mkdtemp(prefix=f"cf-e2e-{request.param}-", dir="/tmp"))
    try:
        topo = start(request.param, rundir)
    except ModuleNotFoundError as exc:
        pytest.skip(f"topology {request.param} not available: {exc}")
    yield topo
    topo.stop()


@pytest.fixture
def chain(topology: Topology, chrony_server, prometheus, short_tmp: Path) -> Iterator[Chain]:
    from clockfleet.protocol import signing

    keys = make_keys(short_tmp / "keys")
    private = short_tmp / "keys" / "ops-test.key"
    assert private.exists() and signing.load_signing_key(private)
    servers = [chrony_server(), chrony_server()]
    chain_dir = short_tmp / "chain"
    chain_dir.mkdir()
    collector = RunningCollector(topology, "collector")
    wait_until(lambda: collector.collector.connected, what="collector subscribed")
    topology.add(*(aid for aid, _ in AGENTS))
    agents = [
        make_agent(topology, aid, region=region, keys=keys, conn=topology.settings(aid, agent=i))
        for i, (aid, region) in enumerate(AGENTS)
    ]
    fleet = Fleet(workers=4)
    for a in agents:
        fleet.add(a)
    fleet.start()
    prom = prometheus(f"127.0.0.1:{collector.server.server_port}")
    pairs = [(s.host, s.port) for s in servers]
    chain = Chain(topology, chain_dir, keys, private, agents, fleet, collector, prom, pairs)
    try:
        yield chain
    finally:
        fleet.stop(timeout_s=3.0)
        collector.stop()


def test_every_agent_syncs_to_the_published_list_and_prometheus_sees_it(chain: Chain):
    servers = chain.servers
    chain.publish(servers)
    wait_until(
        lambda: all(a.last_report is not None and a.last_report.ok for a in chain.agents),
        timeout_s=30,
        what="every agent's first good sync",
    )
    version = chain.agents[0].last_report.list_version  # type: ignore[union-attr]
    wait_until(lambda: chain.versions_at_collector() == {version}, what="collector: all agents")
    chain.prometheus.wait_for(
        f"count(clockfleet_agent_list_version == {version})",
        lambda r: r and float(r[0]["value"][1]) == len(AGENTS),
        timeout_s=45,
    )


def test_a_changed_list_reaches_every_agent_the_collector_and_prometheus(chain: Chain):
    servers = chain.servers
    chain.publish(servers)
    wait_until(lambda: all(a.last_report is not None for a in chain.agents), timeout_s=30)
    first = max(a.last_report.list_version for a in chain.agents)  # type: ignore[union-attr]
    chain.publish(list(reversed(servers)))  # a change: the second server first
    wait_until(
        lambda: all(
            a.last_report is not None
            and a.last_report.list_version > first
            and a.last_report.server is not None
            and (a.last_report.server.host, a.last_report.server.port) == servers[1]
            for a in chain.agents
        ),
        timeout_s=30,
        what="every agent on the changed list, synced to its new first server",
    )
    latest = chain.agents[0].last_report.list_version  # type: ignore[union-attr]
    wait_until(lambda: chain.versions_at_collector() == {latest}, what="collector: the change")
    chain.prometheus.wait_for(
        f"count(clockfleet_agent_list_version == {latest})",
        lambda r: r and float(r[0]["value"][1]) == len(AGENTS),
        timeout_s=45,
    )
