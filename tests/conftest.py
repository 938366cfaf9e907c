"""Fixtures that start real daemons on loopback: Mosquitto (as shipped), chronyd, Prometheus.

Every daemon is a child process in a short temporary directory (chronyd's command socket
path must stay under 108 bytes) and is stopped when the test ends.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol.connection_file import ENV_CONNECTION, ENV_OF

# Fixtures only; the helpers tests share live in tests/helpers.py.
from tests.helpers import next_loopback_address

# Prints, after every run, how many brokers ran the shipped configuration (and why not).
pytest_plugins = ["tests.broker_census"]

# Tests that start daemons, processes or containers, by the fixtures they use or the folder
# they live in: `pytest -m "not integration"` runs the rest (pure rules) in seconds.
DAEMON_FIXTURES = frozenset(
    {
        "broker",
        "chrony_server",
        "chrony_client",
        "publish",
        "start_collector",
        "running_collector",
        "prometheus",
        "engine",
        "stack",
        "debs",
        "images",
        "fresh_host",
        "tls_broker",
    }
)
INTEGRATION_FOLDERS = frozenset({"hosts", "demo", "packaging", "bench", "compose"})


def pytest_configure(config: pytest.Config) -> None:
    """Hermetic: an operator's connection file or CLOCKFLEET_* connection settings on the
    machine running the suite never reach the programs under test (nor their children)."""
    for name in (ENV_CONNECTION, *ENV_OF.values()):
        os.environ.pop(name, None)
    os.environ[ENV_CONNECTION] = ""  # set and empty: no default connection file is read


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        if folder in INTEGRATION_FOLDERS or DAEMON_FIXTURES & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cf-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


TAKEOVER = "already connected, closing old connection"


@pytest.fixture
def broker(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[ShippedBroker]:
    """Mosquitto as shipped (broker/mosquitto.conf): identities made by
    broker/clockfleet-identities, broker/acl, the TLS listener with a test CA and the plain
    loopback listener. broker.settings(ID) / broker.login(ID) connect as an identity; an
    agent id is provisioned on first use (SIGHUP, as an operator adds a host).

    The test fails if the broker closed any session because the same identity logged in
    again (two sessions knocking each other off), unless it is marked `takeover`."""
    b = devstack.start_shipped_mosquitto(short_tmp / "broker")
    yield b
    b.stop()
    log = b.daemon.log.read_text(errors="replace") if b.daemon.log.exists() else ""
    takeovers = [line for line in log.splitlines() if TAKEOVER in line]
    if takeovers and request.node.get_closest_marker("takeover") is None:
        pytest.fail(
            "two sessions of one identity knocked each other off:\n" + "\n".join(takeovers[:5]),
            pytrace=False,
        )


@pytest.fixture
def chrony_server(short_tmp: Path) -> Iterator[Callable[..., devstack.Daemon]]:
    """Factory: chrony_server(stratum=8, fake_offset_s=None) -> a running chronyd (-x)."""
    started: list[devstack.Daemon] = []
    counter = itertools.count()

    def start(**kwargs) -> devstack.Daemon:
        kwargs.setdefault("address", next_loopback_address())
        d = devstack.start_chronyd_server(short_tmp / f"chrony{next(counter)}", **kwargs)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()
