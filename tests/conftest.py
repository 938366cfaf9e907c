"""Fixtures that start real daemons on loopback: Mosquitto, chronyd, Prometheus.

Every daemon is a child process in a short temporary directory (chronyd's command socket
path must stay under 108 bytes) and is stopped when the test ends.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clockfleet import devstack

# Fixtures only; the helpers tests share live in tests/helpers.py.
from tests.helpers import next_loopback_address

# Tests that start daemons, processes or containers, by the fixtures they use or the folder
# they live in: `pytest -m "not integration"` runs the rest (pure rules) in seconds.
DAEMON_FIXTURES = frozenset(
    {
        "mosquitto",
        "broker_url",
        "chrony_server",
        "chrony_client",
        "production_broker",
        "broker",
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


@pytest.fixture
def mosquitto(short_tmp: Path) -> Iterator[devstack.Daemon]:
    """A fresh anonymous Mosquitto on a free loopback port, persistence on."""
    d = devstack.start_mosquitto(short_tmp / "mosquitto")
    yield d
    d.stop()


@pytest.fixture
def broker_url(mosquitto: devstack.Daemon) -> str:
    return f"mqtt://{mosquitto.host}:{mosquitto.port}"


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
