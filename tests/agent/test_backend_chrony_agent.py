"""`clockfleet agent --once` with the chrony backend and a time zone root, as a user runs it:
real Mosquitto, a real chronyd NTP server, a real chronyd client (-x) taking the list, and
the time zone set under a temporary root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(90)


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clockfleet", "agent", "--once", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_config(path: Path, **settings) -> Path:
    path.write_text(yaml.safe_dump(settings))
    return path


def test_agent_hands_its_list_to_chronyd_and_sets_the_zone(
    broker, keys, publisher, chrony_server, chrony_client, short_tmp
):
    first, second = chrony_server(), chrony_server()
    servers = [(first.host, first.port), (second.host, second.port)]
    publisher.server_list("r1", 5, servers)
    publisher.profile("a1", "r1", "America/Chicago", 2)
    tz_root = short_tmp / "root"
    config = write_config(
        short_tmp / "agent.yaml",
        id="a1",
        region="r1",
        broker=broker.url,
        username="a1",
        password_file=str(broker.password_file("a1")),
        trust_keys=[str(keys.pub)],
        state_dir=str(short_tmp / "state"),
        tz_root=str(tz_root),
        once_timeout_s=20,
        backend="chrony",
        backend_options={
            "sourcedir": str(chrony_client.sourcedir),
            "socket": str(chrony_client.socket),
        },
    )

    done = run_once(config)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], report["discipline"]) == (True, "chrony")
    assert report["server"] == {"host": first.host, "port": first.port}
    assert report["timezone"] == "America/Chicago"
    assert os.readlink(tz_root / "etc/localtime") == "/usr/share/zoneinfo/America/Chicago"
    sources = (chrony_client.sourcedir / "clockfleet.sources").read_text()
    assert f"server {first.host} port {first.port} iburst prefer\n" in sources
    assert f"server {second.host} port {second.port} iburst\n" in sources
    assert set(chrony_client.sources()) == {first.host, second.host}


def test_agent_reports_a_failed_sync_when_chronyd_is_down(
    broker, keys, publisher, chrony_server, chrony_client, short_tmp
):
    ntp = chrony_server()
    publisher.server_list("r1", 5, [(ntp.host, ntp.port)])
    chrony_client.daemon.stop()
    config = write_config(
        short_tmp / "agent.yaml",
        id="a1",
        region="r1",
        broker=broker.url,
        username="a1",
        password_file=str(broker.password_file("a1")),
        trust_keys=[str(keys.pub)],
        state_dir=str(short_tmp / "state"),
        tz_root=None,
        once_timeout_s=20,
        backend="chrony",
        backend_options={
            "sourcedir": str(chrony_client.sourcedir),
            "socket": str(chrony_client.socket),
        },
    )

    done = run_once(config)

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["discipline"] == "none"
    assert "is chronyd running?" in json.dumps(report)
