from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.brokerstack import Broker, start_broker

AGENTS = ["acme-01", "acme-02"]


@pytest.fixture
def production_broker(short_tmp: Path) -> Iterator[Broker]:
    """Mosquitto from broker/mosquitto.conf: identities, ACL, TLS listener, no anonymous."""
    b = start_broker(short_tmp, AGENTS, production=True)
    yield b
    b.daemon.stop()
