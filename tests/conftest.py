"""Fixtures that start real daemons on loopback: Mosquitto, chronyd, Prometheus.

Every daemon is a child process in a short temporary directory (chronyd's command socket
path must stay under 108 bytes) and is stopped when the test ends.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clockfleet import devstack

REPO = Path(__file__).resolve().parent.parent

# Each chronyd gets its own loopback address: chrony keys sources by IP, not port.
_addresses = (f"127.0.{n // 250}.{n % 250 + 2}" for n in itertools.count(8))


def next_loopback_address() -> str:
    return next(_addresses)


def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "", *, step_s: float = 0.01
) -> Any:
    """Poll until predicate() is truthy and return its value; fail the test naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step_s)
    value = predicate()
    assert value, f"timed out after {timeout_s} s waiting for {what or predicate}"
    return value


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
