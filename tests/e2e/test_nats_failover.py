"""A NATS node dies mid-run: nothing is lost.

One scenario, run once per module (tests below each check one of its outcomes): 30 agents
(one Fleet process) and a collector on a 3-node NATS cluster; the collector sits on the
node most agents use. A list change is published with a resync jitter of 2 s, so reports are
still flowing when that node is SIGKILLed, while the list is fanning out. Then: every agent
ends on the latest list, every agent's latest report reaches the collector, /metrics shows
them all, and the killed node, restarted, rejoins and serves the latest list. The time from
the kill until every agent's report of the latest list is at the collector is logged (the
benchmark `python -m bench scaleout` measures it at N=1000).

The cluster runs the shipped security configuration (broker/nats/make-security-conf): each
agent logs in as its own identity, the publisher as `publisher`, the collector as
`collector`."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import devstack
from clockfleet.agent.fleet import Fleet
from clockfleet.agent.service import Agent
from clockfleet.devstack.nats import NatsCluster, start_cluster
from clockfleet.protocol import topics
from tests.agent.servicekit import make_agent, make_keys
from tests.collector.kit import RunningCollector
from tests.helpers import next_loopback_address, wait_until

log = logging.getLogger(__name__)

N_AGENTS = 30
REGION = "us-east"
ALL_BACK_LOOSE_S = 45.0  # the bench's goal at N=1000 is 15 s; this only catches a hang
FLEET = """\
defaults: {{poll_interval_s: 3600, resync_jitter_s: {jitter}}}
regions:
  {region}:
    timezone: America/New_York
    servers: [{servers}]
"""


@dataclass
class Outcome:
    cluster: NatsCluster
    agents: list[Agent]
    collector: RunningCollector
    killed: int
    on_killed: int
    latest: int = 0
    all_back_s: float | None = None
    publish_rc: int | None = None
    publish_err: str = ""
    notes: list[str] = field(default_factory=list)


def _publish_cmd(
    rundir: Path, key: Path, cluster: NatsCluster, servers: list[tuple[str, int]]
) -> list[str]:
    path = rundir / "fleet.yaml"
    listed = ", ".join(f"{{host: {h}, port: {p}}}" for h, p in servers)
    path.write_text(FLEET.format(jitter=2, region=REGION, servers=listed))
    return [
        sys.executable, "-m", "clockfleet", "publish", "--config", str(path),
        "--signing-key", str(key), *cluster.login("publisher"),
        "--force",  # silent servers on purpose
    ]  # fmt: skip


def _reports_at_collector(collector: RunningCollector, version: int) -> int:
    return sum(
        1
        for a in collector.state.agents.values()
        if getattr(a, "report", None) is not None and a.report.list_version >= version
    )


def _collector_on_node(cluster: NatsCluster, node: int) -> RunningCollector:
    """A running collector connected to `node` (its rotation is random: start until it is)."""
    for _ in range(30):
        c = RunningCollector(cluster)
        wait_until(lambda c=c: c.collector.connected, what="collector subscribed")
        if cluster.node_of(c.collector.client_id) == node:
            return c
        c.stop()
    raise AssertionError(f"the collector never landed on node {node}")


@pytest.fixture(scope="module")
def outcome() -> Iterator[Outcome]:
    rundir = Path(tempfile.mkdtemp(prefix="cf-natsfo-", dir="/tmp"))
    ids = [f"fo-{i:02d}" for i in range(N_AGENTS)]
    cluster = start_cluster(rundir / "cluster", agents=ids)
    chrony = [
        devstack.start_chronyd_server(rundir / f"chrony{i}", address=next_loopback_address())
        for i in range(2)
    ]
    servers = [(c.host, c.port) for c in chrony]
    keys = make_keys(rundir / "keys")
    key = rundir / "keys" / "ops-test.key"
    fleet = Fleet(workers=4)
    collector: RunningCollector | None = None
    try:
        agents = [make_agent(cluster, a, region=REGION, keys=keys) for a in ids]
        for a in agents:
            fleet.add(a)
        fleet.start()
        done = subprocess.run(
            _publish_cmd(rundir, key, cluster, servers),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        wait_until(
            lambda: all(a.last_report is not None and a.last_report.ok for a in agents),
            timeout_s=60,
            what="every agent's first good sync",
        )
        first = max(a.last_report.list_version for a in agents)  # type: ignore[union-attr]
        wait_until(
            lambda: (
                len(cluster.clients_by_node()) == 3
                and sum(
                    len([c for c in ids if c.startswith("clockfleet-agent-fo-")])
                    for ids in cluster.clients_by_node().values()
                )
                == N_AGENTS
            ),
            what="every agent seen on a node",
        )
        client_ids = {a.link.client_id for a in agents}
        target, on_target = cluster.busiest(client_ids)
        assert on_target >= N_AGENTS // 3  # the busiest of three holds at least a third
        collector = _collector_on_node(cluster, target)
        wait_until(lambda: _reports_at_collector(collector, first) == N_AGENTS, what="collector")

        # The change: reversed order (the second server first), with jitter 2 s.
        proc = subprocess.Popen(
            _publish_cmd(rundir, key, cluster, list(reversed(servers))),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Kill once the new list is on its way: the first agent has reported it.
        wait_until(
            lambda: any(
                a.last_report is not None and a.last_report.list_version > first for a in agents
            ),
            timeout_s=30,
            what="the change reaching a first agent",
        )
        out = Outcome(cluster, agents, collector, target, on_target)
        t_kill = cluster.kill(target)
        out.latest = max(a.last_report.list_version for a in agents)  # type: ignore[union-attr]
        _, err = proc.communicate(timeout=60)
        out.publish_rc, out.publish_err = proc.returncode, err
        before = _reports_at_collector(collector, out.latest)
        out.notes.append(f"{before} of {N_AGENTS} reports of the change in at the kill")
        deadline = t_kill + ALL_BACK_LOOSE_S
        while time.monotonic() < deadline:
            if _reports_at_collector(collector, out.latest) == N_AGENTS and all(
                a.last_report is not None and a.last_report.list_version == out.latest
                for a in agents
            ):
                out.all_back_s = time.monotonic() - t_kill
                break
            time.sleep(0.02)
        log.warning(
            "NATS failover, N=%d: node n%d (%d agents and the collector) SIGKILLed; "
            "all back after %s s; %s",
            N_AGENTS,
            target,
            on_target,
            f"{out.all_back_s:.2f}" if out.all_back_s is not None else "never",
            "; ".join(out.notes),
        )
        cluster.restart(target)
        yield out
    finally:
        fleet.stop(timeout_s=3.0)
        if collector is not None:
            collector.stop()
        cluster.stop()
        for c in chrony:
            c.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def test_the_list_change_published_during_the_kill_succeeds(outcome: Outcome):
    assert outcome.publish_rc == 0, outcome.publish_err


def test_every_agent_ends_on_the_latest_list(outcome: Outcome):
    wait_until(
        lambda: all(
            a.last_report is not None
            and a.last_report.ok
            and a.last_report.list_version == outcome.latest
            for a in outcome.agents
        ),
        timeout_s=10,
        what="every agent on the latest list",
    )


def test_every_agents_latest_report_reaches_the_collector(outcome: Outcome):
    def same() -> bool:
        seen = outcome.collector.state.agents
        return all(
            a.id in seen
            and getattr(seen[a.id], "report", None) is not None
            and a.last_report is not None
            and seen[a.id].report.at == a.last_report.at
            for a in outcome.agents
        )

    wait_until(same, timeout_s=10, what="the collector holding each agent's latest report")


def test_metrics_show_every_agent_on_the_latest_list(outcome: Outcome):
    def on_latest() -> int:
        samples = outcome.collector.samples()
        return sum(
            1
            for (name, _labels), value in samples.items()
            if name == "clockfleet_agent_list_version" and value == outcome.latest
        )

    wait_until(lambda: on_latest() == N_AGENTS, timeout_s=10, what="/metrics: every agent")


def test_all_agents_are_back_within_the_loose_bound_after_the_kill(outcome: Outcome):
    assert outcome.all_back_s is not None, f"not all back within {ALL_BACK_LOOSE_S} s"
    assert outcome.all_back_s < ALL_BACK_LOOSE_S


def test_the_restarted_node_rejoins_the_cluster(outcome: Outcome):
    node = outcome.cluster.nodes[outcome.killed]
    routes = node.monitor("/routez")
    jsz = node.monitor("/jsz")
    assert node.healthy()
    assert routes.get("num_routes") == 2
    assert jsz["meta_cluster"]["cluster_size"] == 3


def test_the_restarted_node_serves_the_latest_list(outcome: Outcome):
    node = outcome.cluster.nodes[outcome.killed]
    got: list[int] = []
    arrived = threading.Event()

    def on_message(c, ud, msg):
        got.append(json.loads(msg.payload)["version"])
        arrived.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fo-check-restarted")
    client.username_pw_set("operator", outcome.cluster.password("operator"))
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(topics.servers_topic("clock/v1", REGION), 0)
    client.connect("127.0.0.1", node.mqtt_port)
    client.loop_start()
    try:
        assert arrived.wait(10), "no retained list from the restarted node"
    finally:
        client.disconnect()
        client.loop_stop()
    assert got[0] == outcome.latest
