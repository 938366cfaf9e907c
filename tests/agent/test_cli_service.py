"""`clockfleet agent` as the long-running service (what the systemd unit runs): it reports,
follows a changed list, and on SIGTERM says `offline` and exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.agent.servicekit import PREFIX, Publisher, Watcher, make_keys


def test_service_reports_follows_a_new_list_and_stops_cleanly_on_sigterm(
    broker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 1, [(ntp.host, ntp.port)], resync_jitter_s=0)
    reports = Watcher(broker, f"{PREFIX}/agents/svc1/report")
    statuses = Watcher(broker, f"{PREFIX}/agents/svc1/status", identity="collector")
    config = short_tmp / "agent.yaml"
    config.write_text(
        f"id: svc1\nregion: r1\nbackend: observe\nbroker: {broker.url}\n"
        f"username: svc1\npassword_file: {broker.password_file('svc1')}\n"
        f"trust_keys: [{keys.pub}]\nstate_dir: {short_tmp / 'state'}\ntz_root: null\n"
        "startup_delay_s: 0\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "clockfleet", "agent", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        reports.wait_for(lambda m: m["list_version"] == 1)
        pub.server_list("r1", 2, [(ntp.host, ntp.port)], resync_jitter_s=0)
        reports.wait_for(lambda m: m["list_version"] == 2)
        statuses.wait_for(lambda m: m["state"] == "online")

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
        reports.close()
    try:
        statuses.wait_for(lambda m: m["state"] == "offline")
    finally:
        statuses.close()
    assert proc.returncode == 0, err
    assert "list v2 applied from region r1" in err
    assert "stopping" in err


def _service(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clockfleet", "agent", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _config(short_tmp: Path, broker, keys, agent_id: str = "svc1") -> Path:
    config = short_tmp / "agent.yaml"
    config.write_text(
        f"id: {agent_id}\nregion: r1\nbackend: observe\nbroker: {broker.url}\n"
        f"username: {agent_id}\npassword_file: {broker.password_file(agent_id)}\n"
        f"trust_keys: [{keys.pub}]\nstate_dir: {short_tmp / 'state'}\ntz_root: null\n"
        "startup_delay_s: 0\n"
    )
    return config


def test_once_beside_the_running_service_asks_it_to_sync_and_prints_its_report(
    broker, chrony_server, short_tmp: Path
):
    """One login per identity: `--once` must not knock the service off the broker (the
    broker fixture fails the test on any takeover), so the service syncs for it."""
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 1, [(ntp.host, ntp.port)], resync_jitter_s=0)
    reports = Watcher(broker, f"{PREFIX}/agents/svc1/report")
    config = _config(short_tmp, broker, keys)
    proc = _service(config)
    try:
        first = reports.wait_for(lambda m: m["list_version"] == 1)

        once = subprocess.run(
            [sys.executable, "-m", "clockfleet", "agent", "--config", str(config), "--once"],
            capture_output=True,
            text=True,
            timeout=60,
        )

        assert once.returncode == 0, once.stderr
        printed = json.loads(once.stdout)
        assert printed["ok"] is True and printed["at"] > first["at"]
        assert f"agent service (pid {proc.pid})" in once.stderr
        reports.wait_for(lambda m: m["at"] == printed["at"])  # the service published it
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        pub.close()
        reports.close()


def test_a_second_service_on_the_same_state_directory_refuses_to_start(
    broker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 1, [(ntp.host, ntp.port)], resync_jitter_s=0)
    reports = Watcher(broker, f"{PREFIX}/agents/svc1/report")
    config = _config(short_tmp, broker, keys)
    first = _service(config)
    try:
        reports.wait_for(lambda m: m["list_version"] == 1)
        second = _service(config)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 2
        assert f"another agent service (pid {first.pid}) runs on state directory" in err
        assert first.poll() is None
    finally:
        first.terminate()
        first.communicate(timeout=10)
        pub.close()
        reports.close()
