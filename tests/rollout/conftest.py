"""Fixtures for the rollout tests: a signed region of agents on a real Mosquitto."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clockfleet.agent.fleet import Fleet
from clockfleet.devstack.mosquitto import ShippedBroker
from tests.agent.servicekit import make_agent, make_keys
from tests.rollout.kit import Region


@pytest.fixture
def region(broker: ShippedBroker, short_tmp: Path) -> Iterator[Region]:
    r = Region(short_tmp, broker, make_keys(short_tmp / "keys"))
    r.seed_versions()
    yield r


@pytest.fixture
def start_agents(region: Region) -> Iterator[Callable[[list[str]], Fleet]]:
    """start_agents(ids): agents of region r1 (observe backend, jitter 0) on one Fleet."""
    fleets: list[Fleet] = []

    def start(ids: list[str]) -> Fleet:
        region.broker.add(*ids)
        region.placed = sorted(set(region.placed) | set(ids))
        agents = [make_agent(region.broker, aid, region="r1", keys=region.keys) for aid in ids]
        fleet = Fleet(workers=4)
        for a in agents:
            fleet.add(a)
        fleet.start()
        fleets.append(fleet)
        region.agents = agents
        return fleet

    yield start
    for f in fleets:
        f.stop(timeout_s=3.0)
