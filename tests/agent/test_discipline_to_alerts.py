"""From a real agent to the alert rules: `clockfleet agent --once` against real chronyd, its
report through the real collector into a real Prometheus running config/alerts.yml.

- A host stepped by 2 s (the chrony backend): the fleet's server runs 2 s ahead of this
  machine (libfaketime), so the probe measures +2 s; the agent hands the list to a chronyd
  client that runs -x (it never touches this machine's clock: it measures the 2 s, "corrects"
  them in its own bookkeeping only, and says so as a stepped chronyd would, System time ~0).
  The drift alert judges chronyd's tracking and stays quiet; the probe's offset still shows
  the 2 s. What this does not show is a kernel clock really stepped: no test may do that.
- A host whose zone file for Europe/Dublin carries Asia/Kolkata's rules (`tz_root`, read
  inside that root as the host would): the two UTC-offset series differ by Kolkata's offset
  minus Dublin's now (19,800 s in winter), and ClockfleetZoneRulesDisagree is pending.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zoneinfo
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from tests.collector.kit import Prometheus, RunningCollector, prometheus_factory
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def watched(broker) -> Iterator[tuple[RunningCollector, Prometheus]]:
    collector = RunningCollector(broker)
    try:
        with prometheus_factory() as start:
            yield collector, start(f"127.0.0.1:{collector.server.server_port}")
    finally:
        collector.stop()


def run_once(tmp: Path, broker, keys, agent: str, **settings) -> dict:
    config = tmp / f"{agent}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "id": agent,
                "region": "r1",
                "broker": broker.url,
                "username": agent,
                "password_file": str(broker.password_file(agent)),
                "trust_keys": [str(keys.pub)],
                "state_dir": str(tmp / f"state-{agent}"),
                "once_timeout_s": 30,
                **settings,
            }
        )
    )
    argv = [sys.executable, "-m", "clockfleet", "agent", "--once", "--config", str(config)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def alerts(prom: Prometheus, name: str) -> list[dict]:
    import urllib.request

    with urllib.request.urlopen(f"{prom.base}/api/v1/rules", timeout=10) as resp:
        groups = json.load(resp)["data"]["groups"]
    rule = next(r for g in groups for r in g["rules"] if r["name"] == name)
    assert rule["health"] == "ok", rule
    return rule["alerts"]


def test_a_host_stepped_by_2s_keeps_the_drift_alert_quiet_and_the_probe_shows_the_step(
    broker, keys, publisher, chrony_server, chrony_client, short_tmp, watched
):
    _, prom = watched
    ahead = chrony_server(fake_offset_s=2.0)
    publisher.server_list("r1", 5, [(ahead.host, ahead.port)])
    backend = {
        "sourcedir": str(chrony_client.sourcedir),
        "socket": str(chrony_client.socket),
        "server_options": "iburst minpoll 0 maxpoll 0",  # selected within ~1 s, even under load
    }

    report = run_once(
        short_tmp, broker, keys, "a1", tz_root=None, backend="chrony", backend_options=backend
    )

    assert report["offset_s"] == pytest.approx(2.0, abs=0.05)  # the probe, before
    chrony = report["clock"]["chrony"]
    assert chrony["reference"] == ahead.host and chrony["leap"] == "normal"
    assert abs(chrony["system_time_s"]) < 0.05  # what chronyd says is left to correct
    assert "kernel" in report["clock"]
    error = prom.wait_for('clockfleet:agent_clock_error_seconds{agent="a1"}', lambda r: r)
    assert float(error[0]["value"][1]) < 0.5
    probe = prom.query('clockfleet_agent_offset_seconds{agent="a1"}')
    assert float(probe[0]["value"][1]) == pytest.approx(2.0, abs=0.05)
    wait_until(lambda: alerts(prom, "ClockfleetAgentDrift") is not None)
    assert alerts(prom, "ClockfleetAgentDrift") == []


def zone_root(root: Path) -> Path:
    """A host root: /etc/localtime names Europe/Dublin, whose file holds Kolkata's rules."""
    zoneinfo_dir = root / "usr/share/zoneinfo"
    (zoneinfo_dir / "Europe").mkdir(parents=True)
    shutil.copyfile("/usr/share/zoneinfo/Asia/Kolkata", zoneinfo_dir / "Europe/Dublin")
    (zoneinfo_dir / "tzdata.zi").write_text("# version 2019c\n")
    (root / "etc").mkdir()
    os.symlink("/usr/share/zoneinfo/Europe/Dublin", root / "etc/localtime")
    return root


def test_a_zone_file_with_other_rules_under_the_same_name_is_seen_and_alerted(
    broker, keys, publisher, chrony_server, short_tmp, watched
):
    _, prom = watched
    ntp = chrony_server()
    publisher.server_list("r1", 5, [(ntp.host, ntp.port)])
    publisher.profile("a2", "r1", "Europe/Dublin", 1)
    root = zone_root(short_tmp / "host")

    report = run_once(short_tmp, broker, keys, "a2", tz_root=str(root), backend="observe")

    assert (report["timezone"], report["timezone_expected"]) == ("Europe/Dublin",) * 2
    assert report["tzdata_version"] == "2019c"
    at = datetime.fromisoformat(report["at"].replace("Z", "+00:00")).astimezone(timezone.utc)
    kolkata, dublin = (
        at.astimezone(zoneinfo.ZoneInfo(z)).utcoffset() for z in ("Asia/Kolkata", "Europe/Dublin")
    )
    want = (kolkata - dublin).total_seconds()
    assert want == 19800 or at.month in range(4, 11)  # 16,200 in Irish summer time
    diff = prom.wait_for(
        'clockfleet_agent_utc_offset_seconds{agent="a2"}'
        ' - clockfleet_agent_utc_offset_expected_seconds{agent="a2"}',
        lambda r: r,
    )
    assert float(diff[0]["value"][1]) == want
    pending = wait_until(lambda: alerts(prom, "ClockfleetZoneRulesDisagree"), timeout_s=30)
    assert [(a["labels"]["agent"], a["labels"]["tzdata"]) for a in pending] == [("a2", "2019c")]
