"""The broker tests use the suite's `broker` fixture (tests/conftest.py): Mosquitto from
broker/mosquitto.conf, identities, ACL, TLS listener, no anonymous access."""

from collections.abc import Iterator

import pytest

from clockfleet.devstack.nats import NatsCluster
from tests.broker.natskit import started_cluster


@pytest.fixture(scope="package")
def cluster() -> Iterator[NatsCluster]:
    """One 3-node NATS cluster as shipped, for every NATS module here (starting one costs
    ~3 s; the tests use identities and topics of their own)."""
    yield from started_cluster()
