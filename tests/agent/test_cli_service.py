"""`clockfleet agent` as the long-running service (what the systemd unit runs): it reports,
follows a changed list, and on SIGTERM says `offline` and exits 0."""

from __future__ import annotations

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
