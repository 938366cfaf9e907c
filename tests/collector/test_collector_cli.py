"""`clockfleet collector` as the installed command: one line and exit 2 on a bad argument or
no broker, /metrics on the --listen address."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from clockfleet import devstack
from tests.collector.kit import report, report_topic, wait_until


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clockfleet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_collector_cli_exits_2_with_one_line_when_no_broker_answers():
    port = devstack.free_port()
    r = run_cli("collector", "--broker", f"mqtt://127.0.0.1:{port}", "--listen", "127.0.0.1:0")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no broker reachable" in lines[0], r.stderr


def test_collector_cli_exits_2_on_a_bad_listen_address(broker):
    r = run_cli("collector", *broker.login("collector"), "--listen", "nowhere")
    assert r.returncode == 2
    assert "HOST:PORT" in r.stderr


def test_collector_cli_serves_metrics_on_the_listen_address(broker, publisher):
    publisher.publish(report_topic("acme-01"), report("acme-01", offset_s=0.042))
    port = devstack.free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clockfleet",
            "collector",
            *broker.login("collector"),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        text = ""

        def scraped() -> bool:
            nonlocal text
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                return False
            return 'clockfleet_agent_offset_seconds{agent="acme-01",region="us-east"}' in text

        wait_until(scraped, what="the CLI's /metrics")
        assert 'clockfleet_agent_offset_seconds{agent="acme-01",region="us-east"} 0.042' in text
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
