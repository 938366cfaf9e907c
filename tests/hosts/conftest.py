"""Fixtures for the agent package under real systemd (Debian 11/12/13 containers).

- `engine`: the Docker engine, or a skip that says why not (pytest -rs prints it).
- `stack` (session): on this machine's loopback, Mosquitto, chronyd NTP servers (-x), a
  signing key and the real publisher (`clockfleet publish`); a subscriber that collects every
  agent's retained report.
- `debs` (session, per suite): the package built from this checkout (and a later version of
  it, for the upgrade test).
- `fresh_host(suite)`: a new systemd container of that suite, stopped after the test's module.
- `apt_archive` (session): signed apt repositories of those packages, served on 127.0.0.1
  (aptkit.py), one per test that asks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import devstack
from tests.helpers import next_loopback_address
from tests.hosts import aptkit, hostkit
from tests.hosts.stack import Stack


@pytest.fixture(scope="session")
def engine() -> None:
    problem = hostkit.engine_problem()
    if problem is not None:
        pytest.skip(problem)


def _subscribe(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
    # On every (re)connect: a clean session forgets its subscriptions.
    client.subscribe("clock/v1/agents/+/report", qos=0)
    client.subscribe("clock/v1/agents/+/status", qos=0)


@pytest.fixture(scope="session")
def stack(engine: None) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="cf-hosts-", dir="/tmp"))
    started: list[devstack.Daemon] = []
    broker = devstack.start_shipped_mosquitto(work / "broker")
    try:
        servers = []
        for n in range(2):
            d = devstack.start_chronyd_server(work / f"ntp{n}", address=next_loopback_address())
            started.append(d)
            servers.append(d)
        port123 = None
        if devstack.is_root():
            port123 = devstack.start_chronyd_server(
                work / "ntp123", address=next_loopback_address(), port=123
            )
            started.append(port123)
        keys = work / "keys"
        keygen = ["keygen", "--out", str(keys), "--key-id", "ops-hosts"]
        r = subprocess.run(
            [sys.executable, "-m", "clockfleet", *keygen],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        s = Stack(work, broker, servers, port123, keys / "ops-hosts.key", keys / "ops-hosts.pub")
        s.regions["hosts"] = [(d.host, d.port) for d in servers]
        if port123 is not None:
            s.regions["hosts123"] = [(port123.host, port123.port)]
        s.publish()
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="collector-2")
        sub.username_pw_set("collector-2", broker.password("collector-2"))
        sub.on_message = s.on_message
        sub.on_connect = _subscribe
        # The broker-down test restarts the broker: be back within a second, not paho's 120 s.
        sub.reconnect_delay_set(0.2, 1)
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        try:
            yield s
        finally:
            sub.loop_stop()
            sub.disconnect()
    finally:
        broker.stop()  # the restarted one, if a test restarted it
        for d in started:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """debs(suite, version=None) -> the package for that suite, built once per session;
    `version`: another upstream version (packaging/build_deb.py --version).

    Needs no engine: the package's own checks (contents, lintian) run everywhere."""
    out = tmp_path_factory.mktemp("debs")
    built: dict[tuple[str, str | None], Path] = {}

    def get(suite: str, version: str | None = None) -> Path:
        if (suite, version) not in built:
            built[(suite, version)] = hostkit.build_deb(suite, out, version)
        return built[(suite, version)]

    return get


@pytest.fixture(scope="session")
def images(engine: None) -> Callable[[str], str]:
    built: dict[str, str] = {}

    def get(suite: str) -> str:
        if suite not in built:
            built[suite] = hostkit.build_image(suite)
        return built[suite]

    return get


@pytest.fixture
def fresh_host(
    images: Callable[[str], str], debs: Callable[..., Path]
) -> Iterator[Callable[..., hostkit.SystemdHost]]:
    """fresh_host(suite, install=True) -> a new booted container, the package installed."""
    started: list[hostkit.SystemdHost] = []

    def boot(suite: str, install: bool = True) -> hostkit.SystemdHost:
        h = hostkit.SystemdHost(images(suite), suite)
        started.append(h)
        h.start()
        if install:
            h.install(debs(suite))
        return h

    yield boot
    for h in started:
        h.stop()


@pytest.fixture(scope="session")
def apt_archive(engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[aptkit.Archive]:
    if shutil.which("apt-ftparchive") is None:
        pytest.skip("apt-ftparchive (apt-utils) is not installed: `make test` installs it")
    root = tmp_path_factory.mktemp("apt") / "www"
    root.mkdir()
    archive = aptkit.Archive(root)
    try:
        yield archive
    finally:
        archive.close()
