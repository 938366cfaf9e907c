"""Fixtures for the collector's tests: a publisher writing as each message's writer would, the
collector in-process with its /metrics endpoint, and a real Prometheus scraping it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from clockfleet.devstack.mosquitto import ShippedBroker
from tests.collector.kit import Prometheus, Publisher, RunningCollector, prometheus_factory
from tests.helpers import wait_until


@pytest.fixture
def publisher(broker: ShippedBroker) -> Iterator[Publisher]:
    """Writes each message as the identity the ACL lets write it (agents, publisher)."""
    p = Publisher(broker)
    yield p
    p.close()


@pytest.fixture
def start_collector(broker: ShippedBroker) -> Iterator[Callable[..., RunningCollector]]:
    """start_collector(identity="collector"): two at once need two identities."""
    started: list[RunningCollector] = []

    def start(identity: str = "collector") -> RunningCollector:
        c = RunningCollector(broker, identity)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def running_collector(start_collector) -> RunningCollector:
    c = start_collector()
    wait_until(lambda: c.collector.connected, what="collector subscribed")
    return c


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Callable[[str], Prometheus]]:
    """Factory: prometheus('host:port') -> a real Prometheus running the committed config
    and alert rules, scraping that target every second (module scope: it takes ~5 s to the
    first scrape)."""
    with prometheus_factory() as start:
        yield start
