"""`clockfleet retire` with data-centre edge brokers (docs/bridges.md): an agent's status and
report are retained on its edge, and the edge's bridge sends its retained reports and statuses
to central again on every reconnect. So an agent is retired on its edge, as `retire` (the
edge ACL's one role with rights); the empty retained messages cross the bridge and clear
central too, for good. A clear made on central alone comes back at the bridge's next
reconnect. Central and one edge as broker/bridges/make-bridges writes them (devstack
bridges.py); the link is cut and restored by the relay in the bridge's path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.devstack import bridges
from clockfleet.devstack.bridges import CentralAndEdges
from tests.broker.mqttclient import login_with
from tests.collector.kit import report, status
from tests.helpers import REPO

ON_EDGE, ON_CENTRAL, WITNESS = "pbx-e1", "pbx-e2", "pbx-e3"


@pytest.fixture(scope="module")
def topo() -> Iterator[CentralAndEdges]:
    """Central and edge dc1; each test retires an agent of its own and cuts the link."""
    rundir = Path(tempfile.mkdtemp(prefix="cf-retire-", dir="/tmp"))
    site = bridges.start_central_and_edges(
        rundir / "site", edges=1, agents=[ON_EDGE, ON_CENTRAL, WITNESS]
    )
    try:
        yield site
    finally:
        site.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def topics(agent: str) -> list[str]:
    return [f"clock/v1/agents/{agent}/{kind}" for kind in ("status", "report")]


def on_central(topo: CentralAndEdges, agent: str) -> set[str]:
    """The agent's topics central retains, as the collector would get them: the witness's
    status, written on the edge after everything under test, comes over the same bridge
    after it (a bridge hands its messages on in order)."""
    witness = f"clock/v1/agents/{WITNESS}/status"
    reader = login_with(topo.settings("collector-2"))
    try:
        reader.subscribe(*topics(agent), witness, qos=1)
        writer = login_with(topo.settings(WITNESS, agent=0))
        try:
            writer.publish(witness, os.urandom(8).hex().encode(), retain=True)
        finally:
            writer.close()
        assert reader.wait(lambda: [m for m in reader.on(witness) if not m.retain])
        last = {m.topic: m.payload for m in reader.messages}  # a clear may follow a copy
        return {topic for topic, payload in last.items() if payload and topic != witness}
    finally:
        reader.close()


def stopped_agent(topo: CentralAndEdges, agent: str) -> None:
    """The agent on its edge wrote its status and report, then its host was shut down."""
    probe = login_with(topo.settings(agent, agent=0))
    try:
        probe.publish(topics(agent)[0], json.dumps(status(agent, "offline")).encode(), retain=True)
        probe.publish(topics(agent)[1], json.dumps(report(agent)).encode(), retain=True)
    finally:
        probe.close()
    assert on_central(topo, agent) == set(topics(agent))


def retire(flags: list[str], agent: str) -> None:
    """`clockfleet retire AGENT --no-revoke` as `retire` (the revocation is the operator's
    command, tested in test_retire.py; here: where the clears must be made)."""
    done = subprocess.run(
        [sys.executable, "-m", "clockfleet", "retire", agent, "--no-revoke", *flags],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "CLOCKFLEET_CONNECTION": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def reconnect_the_bridge(topo: CentralAndEdges) -> None:
    topo.cut(0)
    topo.wait_bridges(up=False, timeout_s=30)
    topo.restore(0)
    topo.wait_bridges(up=True, timeout_s=60)


def test_an_agent_retired_on_its_edge_is_cleared_on_central_for_good(topo: CentralAndEdges):
    stopped_agent(topo, ON_EDGE)
    retire(topo.edge(0).login("retire"), ON_EDGE)
    assert on_central(topo, ON_EDGE) == set()
    reconnect_the_bridge(topo)
    assert on_central(topo, ON_EDGE) == set()


def test_an_agent_cleared_on_central_alone_comes_back_from_its_edge(topo: CentralAndEdges):
    """Why retire runs on the edge: the edge still retains the agent's topics."""
    stopped_agent(topo, ON_CENTRAL)
    retire(topo.login("retire"), ON_CENTRAL)
    assert on_central(topo, ON_CENTRAL) == set()
    reconnect_the_bridge(topo)
    assert on_central(topo, ON_CENTRAL) == set(topics(ON_CENTRAL))
