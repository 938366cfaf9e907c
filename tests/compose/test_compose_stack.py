"""The compose stack, started: `docker compose -f compose.yaml -f compose.local.yaml up --wait`.

compose.yaml is the file users run with official images; none can be pulled here, so
compose.local.yaml builds every service's image on a local Debian 12 base and puts every
container on host networking with its listeners on 127.0.0.1, on ports chosen free for this
run (stackkit.py brings it up and reads it). Grafana is left out: its image cannot be had
(docs/compose.md).

The stack is brought up once for the module and `down -v` by the last test. Without an engine
or the compose v2 plugin every test skips with the reason (`pytest -rs`); `make test` starts
the engine with tests/hosts/engine.sh, which also builds the base image.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.compose.stackkit import (
    BROKER_NAMES,
    Stack,
    prometheus_query,
    retained,
    running_stack,
)
from tests.helpers import REPO, wait_until

pytestmark = pytest.mark.timeout(600)

AGENTS = ("pbx-sample-1", "pbx-sample-2")
LONG_RUNNING = ("mosquitto", "ntp", "collector", "prometheus", "agent-1", "agent-2")
ONE_SHOTS = ("setup", "publisher")
WITH_HEALTHCHECK = ("mosquitto", "ntp", "collector", "prometheus")
# What Mosquitto logs when a second login of one identity ends the first.
TAKEOVER = "already connected, closing old connection"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack() as s:
        yield s


def _state(container: dict[str, Any]) -> tuple[str, int, str | None]:
    st = container["State"]
    return st["Status"], st["ExitCode"], (st.get("Health") or {}).get("Status")


def test_up_wait_leaves_every_service_running_or_done_and_grafana_out(stack: Stack):
    by_service = {
        c["Config"]["Labels"]["com.docker.compose.service"]: _state(c)
        for c in stack.containers()
        if c["Config"]["Labels"].get("com.docker.compose.oneoff") != "True"
    }
    want = {s: ("running", 0, "healthy" if s in WITH_HEALTHCHECK else None) for s in LONG_RUNNING}
    want |= {s: ("exited", 0, None) for s in ONE_SHOTS}
    assert by_service == want


def test_every_container_uses_host_networking_and_none_may_set_the_clock(stack: Stack):
    settings = {
        c["Name"]: (
            c["HostConfig"]["NetworkMode"],
            c["HostConfig"]["Privileged"],
            tuple(sorted(c["HostConfig"].get("CapAdd") or [])),
        )
        for c in stack.containers()
    }
    assert len(settings) == len(LONG_RUNNING) + len(ONE_SHOTS)
    assert set(settings.values()) == {("host", False, ())}


def test_every_listener_in_the_stack_is_on_loopback(stack: Stack):
    # TCP: every listening socket of every process in the stack; UDP: chronyd's (the agents'
    # own UDP sockets are short-lived NTP client sockets).
    listening = []
    for c in stack.containers():
        if c["State"]["Status"] != "running":
            continue
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        root = psutil.Process(c["State"]["Pid"])
        try:
            conns = [
                conn
                for proc in [root, *root.children(recursive=True)]
                for conn in proc.net_connections(kind="inet")
            ]
        except psutil.AccessDenied as exc:
            pytest.skip(f"cannot see the containers' sockets without root: {exc}")
        for conn in conns:
            tcp_listen = conn.type == socket.SOCK_STREAM and conn.status == psutil.CONN_LISTEN
            udp_server = conn.type == socket.SOCK_DGRAM and service == "ntp"
            if tcp_listen or udp_server:
                listening.append((service, conn.laddr.ip, conn.laddr.port))
    ports = {p for _, _, p in listening}
    assert set(stack.ports.values()) <= ports, listening
    assert [x for x in listening if x[1] not in ("127.0.0.1", "::1")] == []


def test_the_publishers_signed_list_reaches_both_sample_agents(stack: Stack):
    topics = ["clock/v1/regions/docker/servers"] + [f"clock/v1/agents/{a}/report" for a in AGENTS]

    def applied() -> dict | None:
        got = retained(stack, topics, len(topics))
        lst = got.get(topics[0])
        reports = [got.get(t) for t in topics[1:]]
        if lst is None or any(r is None or r["list_version"] != lst["version"] for r in reports):
            return None
        return got

    got = wait_until(applied, 60, "both agents to report the published list", step_s=1)
    lst = got[topics[0]]
    assert lst["sig"]["key_id"] == "ops-2026"
    assert lst["servers"] == [{"host": "127.0.0.1", "port": stack.ports["NTP"]}]
    for agent in AGENTS:
        report = got[f"clock/v1/agents/{agent}/report"]
        assert report["ok"] is True, report
        assert report["server"] == {"host": "127.0.0.1", "port": stack.ports["NTP"]}
        assert report["discipline"] == "observe"


def test_agent_reports_reach_the_collector(stack: Stack):
    def exported() -> dict | None:
        m = stack.metrics()
        ok = [
            m.get(("clockfleet_agent_last_report_ok", (("agent", a), ("region", "docker"))))
            for a in AGENTS
        ]
        return m if ok == [1.0, 1.0] else None

    m = wait_until(exported, 60, "the collector to export both agents' good reports", step_s=1)
    published = m[("clockfleet_region_list_version", (("region", "docker"),))]
    for agent in AGENTS:
        key = ("clockfleet_agent_list_version", (("agent", agent), ("region", "docker")))
        assert m[key] == published
    assert m[("clockfleet_region_agents_behind", (("region", "docker"),))] == 0


def test_prometheus_scrapes_the_collector(stack: Stack):
    # config/prometheus.yml scrapes every 15 s: the first scrape is within one interval.
    def scraped() -> list | None:
        result = prometheus_query(
            stack, 'clockfleet_agent_last_report_ok{job="clockfleet-collector"} == 1'
        )
        return result if len(result) == len(AGENTS) else None

    result = wait_until(scraped, 45, "Prometheus to scrape both agents' reports", step_s=1)
    assert sorted(r["metric"]["agent"] for r in result) == list(AGENTS)
    (up,) = prometheus_query(stack, 'up{job="clockfleet-collector"}')
    assert up["value"][1] == "1"


def test_prometheus_loads_every_alert_and_recording_rule_of_config_alerts_yml(stack: Stack):
    want = {
        rule.get("alert") or rule.get("record")
        for group in yaml.safe_load((REPO / "config/alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    body = stack.http_json("PROMETHEUS", "/api/v1/rules")
    loaded = {rule["name"] for group in body["data"]["groups"] for rule in group["rules"]}
    assert want and loaded == want
    assert [r for g in body["data"]["groups"] for r in g["rules"] if r.get("health") == "err"] == []


def test_clockfleet_status_from_this_checkout_lists_the_sample_agents_with_a_good_sync(
    stack: Stack,
):
    password, ca = stack.operator()
    argv = [str(Path(sys.executable).parent / "clockfleet"), "status", "--json"]
    argv += ["--broker", stack.broker_url(), "--ca-file", str(ca)]
    argv += ["--username", "operator", "--password-file", str(password)]

    def rows() -> list | None:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        table = json.loads(r.stdout)
        good = [row for row in table if row["ok"] is True and row["outcome"] == "ok"]
        return table if len(good) == len(AGENTS) else None

    table = wait_until(rows, 60, "`clockfleet status` to show both agents synced", step_s=1)
    assert sorted(row["agent"] for row in table) == list(AGENTS)
    for row in table:
        assert row["state"] == "online", row
        assert row["list_version"] == row["published_version"] and not row["behind"], row
        assert row["server"] == f"127.0.0.1:{stack.ports['NTP']}", row
        assert abs(row["offset_s"]) < 0.5, row


def test_broker_certificate_names_clockfleet_broker_names_for_agents_on_other_hosts(stack: Stack):
    # An agent on another host verifies the broker by the name it connects to.
    _, ca = stack.operator()
    context = ssl.create_default_context(cafile=str(ca))
    verified = []
    for name in BROKER_NAMES:
        raw = socket.create_connection(("127.0.0.1", stack.ports["MQTTS"]), timeout=10)
        with context.wrap_socket(raw, server_hostname=name) as tls:
            verified.append((name, tls.version() is not None))
    assert verified == [(name, True) for name in BROKER_NAMES]


# --- `docker compose run --rm status` beside the running stack --------------------------------


def _collector_link(stack: Stack) -> tuple[float, float]:
    """(connected, reconnects) from the collector's own metrics."""
    m = stack.metrics()
    return (
        m[("clockfleet_collector_broker_connected", ())],
        m[("clockfleet_collector_broker_reconnects_total", ())],
    )


def _setup_containers(stack: Stack) -> list[tuple[str, str, str]]:
    """(id, started, finished) of every container of the setup service."""
    return sorted(
        (c["Id"], c["State"]["StartedAt"], c["State"]["FinishedAt"])
        for c in stack.containers()
        if c["Config"]["Labels"]["com.docker.compose.service"] == "setup"
    )


@dataclass
class StatusRun:
    result: subprocess.CompletedProcess
    link_before: tuple[float, float]
    link_after: tuple[float, float]
    setup_before: list[tuple[str, str, str]]
    setup_after: list[tuple[str, str, str]]
    broker_log: list[str]  # what the broker logged meanwhile


@pytest.fixture(scope="module")
def status_run(stack: Stack) -> StatusRun:
    """The documented `docker compose run --rm status`, once, with the collector connected
    and both agents' reports in (a steady state), and what changed around it."""

    def steady() -> tuple[float, float] | None:
        m = stack.metrics()
        reports = [
            m.get(("clockfleet_agent_last_report_ok", (("agent", a), ("region", "docker"))))
            for a in AGENTS
        ]
        link = _collector_link(stack)
        return link if link[0] == 1.0 and reports == [1.0, 1.0] else None

    link_before = wait_until(steady, 60, "the collector connected with both reports", step_s=1)
    setup_before = _setup_containers(stack)
    log_start = len(stack.broker_log())
    result = stack.docker_compose("run", "--rm", "status")
    # A collector knocked off the broker reconnects after its first backoff (0-1 s), and the
    # second login it makes then knocks off the other: give that time to show.
    time.sleep(3)
    return StatusRun(
        result,
        link_before,
        _collector_link(stack),
        setup_before,
        _setup_containers(stack),
        stack.broker_log()[log_start:],
    )


def test_run_status_prints_the_fleet_table_with_both_agents(status_run: StatusRun):
    assert status_run.result.returncode == 0, status_run.result.stderr
    assert [a for a in AGENTS if a not in status_run.result.stdout] == []


def test_run_status_logs_in_as_the_operator_not_as_the_collector(status_run: StatusRun):
    logins = [line for line in status_run.broker_log if "New client connected" in line]
    assert len(logins) == 1, status_run.broker_log
    assert "u'operator'" in logins[0]


def test_run_status_leaves_the_collector_connected(status_run: StatusRun):
    assert [line for line in status_run.broker_log if TAKEOVER in line] == []
    # (connected, reconnects) as before: still connected, never knocked off meanwhile.
    assert status_run.link_after == status_run.link_before


def test_run_status_does_not_run_setup_again(status_run: StatusRun):
    assert len(status_run.setup_before) == 1
    assert status_run.setup_after == status_run.setup_before


def test_takeover_check_sees_a_second_login_of_the_collectors_identity(
    stack: Stack, status_run: StatusRun
):
    # What `run --rm status` did before it ran as `operator`: the checks above catch it.
    log_start = len(stack.broker_log())
    _, reconnects = _collector_link(stack)
    r = stack.docker_compose(
        "run", "--rm", "--no-deps", "collector", "status", "--broker", stack.broker_url(),
        "--ca-file", "/trust/ca.crt", "--username", "collector",
        "--password-file", "/secrets/collector/password",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    takeovers = wait_until(
        lambda: [ln for ln in stack.broker_log()[log_start:] if TAKEOVER in ln],
        10,
        "the broker to log the takeover",
        step_s=0.5,
    )
    assert "collector" in takeovers[0]
    wait_until(
        lambda: _collector_link(stack)[1] > reconnects, 20, "the collector to reconnect", step_s=0.5
    )


def test_compose_down_leaves_no_container_network_or_volume_behind(stack: Stack):
    # The last test of the module: the stack is gone after it.
    r = stack.docker_compose("down", "--volumes")
    assert r.returncode == 0, r.stderr
    label = f"label=com.docker.compose.project={stack.project}"
    left = {}
    for what in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
        out = subprocess.run(
            ["docker", *what, "--filter", label], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        left[what[0]] = out.stdout.split()
    assert left == {"ps": [], "network": [], "volume": []}
