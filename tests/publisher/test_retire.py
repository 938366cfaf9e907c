"""`clockfleet retire`: on the shipped Mosquitto, with a real collector serving /metrics, and the
shipped identities tool as the revocation (`--reload-pidfile` + `--confirm`, as on a broker
host), as the `retire` identity (the operator may not clear an agent's topics); and through
a data centre's edge broker, where a retired agent must be cleared (test_retire_bridges.py).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import yaml

from clockfleet.devstack.mosquitto import IDENTITIES_TOOL, ShippedBroker
from tests.broker.mqttclient import ConnectRefused, MqttProbe, connect
from tests.collector.kit import Prometheus, RunningCollector, prometheus_factory, report, status
from tests.helpers import REPO, wait_until

AGENT = "pbx-old-7"
TOPICS = {kind: f"clock/v1/agents/{AGENT}/{kind}" for kind in ("status", "report", "profile")}


def revoke_command(broker: ShippedBroker) -> str:
    pidfile = broker.rundir / "mosquitto.pid"
    pidfile.write_text(f"{broker.daemon.proc.pid}\n")
    return shlex.join(
        [
            sys.executable, str(IDENTITIES_TOOL), "--out", str(broker.identities),
            "--revoke", "{agent}", "--yes", "--reload-pidfile", str(pidfile),
            "--confirm", broker.url,
        ]
    )  # fmt: skip


def retire(
    broker: ShippedBroker, *args: str, identity: str = "retire"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clockfleet", "retire", *args, *broker.login(identity)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "CLOCKFLEET_CONNECTION": ""},  # no connection file of this machine
    )  # fmt: skip


def agent_session(broker: ShippedBroker, **kwargs) -> MqttProbe:
    """The agent as it runs: its will says offline; its status and report retained."""
    agent = connect(
        broker.port, AGENT, broker.password(AGENT),
        will=(TOPICS["status"], json.dumps(status(AGENT, "offline")).encode()), **kwargs,
    )  # fmt: skip
    agent.publish(TOPICS["status"], json.dumps(status(AGENT)).encode(), retain=True)
    agent.publish(TOPICS["report"], json.dumps(report(AGENT)).encode(), retain=True)
    return agent


def retained(broker: ShippedBroker) -> dict[str, bytes]:
    """What a fresh reader (the operator) gets retained under the agent's topics."""
    reader = connect(broker.port, "operator", broker.password("operator"))
    try:
        reader.subscribe(f"clock/v1/agents/{AGENT}/#", "clock/v1/agents/witness/cmd")
        reader.sync("clock/v1/agents/witness/cmd")
        return {m.topic: m.payload for m in reader.messages if m.retain and m.payload}
    finally:
        reader.close()


@pytest.fixture
def collector(broker: ShippedBroker) -> Iterator[RunningCollector]:
    c = RunningCollector(broker)
    wait_until(lambda: c.collector.connected, what="collector subscribed")
    yield c
    c.stop()


def listed(c: RunningCollector) -> bool:
    return f'agent="{AGENT}"' in c.scrape_text()


def test_a_dry_run_shows_the_plan_and_changes_nothing(broker: ShippedBroker):
    agent = agent_session(broker)
    agent.close()
    before = retained(broker)
    done = retire(broker, AGENT, "--dry-run", "--revoke-command", revoke_command(broker))
    assert done.returncode == 0, done.stderr
    assert "dry run" in done.stdout and "--revoke pbx-old-7" in done.stdout
    assert f"clear:  {TOPICS['status']} (retained," in done.stdout
    assert f"clear:  {TOPICS['report']} (retained," in done.stdout
    assert retained(broker) == before
    connect(broker.port, AGENT, broker.password(AGENT)).close()  # still its identity


def test_retiring_a_stopped_agent_clears_it_from_metrics_and_the_broker_within_10_s(
    broker: ShippedBroker, collector: RunningCollector
):
    secret = broker.password(AGENT)
    agent = agent_session(broker)
    agent.client.disconnect()  # stopped: its status and report stay retained
    agent.client.loop_stop()
    wait_until(lambda: listed(collector), 10, "the agent on /metrics")
    t0 = time.monotonic()
    done = retire(broker, AGENT, "--revoke-command", revoke_command(broker))
    assert done.returncode == 0, done.stdout + done.stderr
    wait_until(lambda: not listed(collector), 10 - (time.monotonic() - t0), "gone from /metrics")
    assert time.monotonic() - t0 < 10
    assert retained(broker) == {}
    with pytest.raises(ConnectRefused):
        connect(broker.port, AGENT, secret)


def test_retiring_a_connected_agent_disconnects_it_within_5_s_and_it_cannot_come_back(
    broker: ShippedBroker, collector: RunningCollector
):
    secret = broker.password(AGENT)
    agent = agent_session(broker)
    agent.client.reconnect_delay_set(0.1, 0.2)  # it tries to come back at once
    try:
        wait_until(lambda: listed(collector), 10, "the agent on /metrics")
        t0 = time.monotonic()
        done = retire(broker, AGENT, "--revoke-command", revoke_command(broker))
        assert done.returncode == 0, done.stdout + done.stderr
        assert agent.wait(lambda: agent.disconnects != [], timeout_s=5.0 - (time.monotonic() - t0))
        wait_until(lambda: not listed(collector), 10, "gone from /metrics")
        assert not agent.wait(agent.client.is_connected, timeout_s=1.0)  # refused meanwhile
    finally:
        agent.close()
    assert retained(broker) == {}  # and no will brought its status back
    with pytest.raises(ConnectRefused):
        connect(broker.port, AGENT, secret)


def test_a_failed_revocation_clears_nothing(broker: ShippedBroker):
    agent_session(broker).close()
    before = retained(broker)
    done = retire(broker, AGENT, "--revoke-command", f"{sys.executable} -c 'raise SystemExit(3)'")
    assert done.returncode == 1
    assert "revocation failed, nothing cleared" in done.stderr and "exited 3" in done.stderr
    assert retained(broker) == before


def test_the_profile_is_left_to_the_publisher_and_named(broker: ShippedBroker):
    agent_session(broker).close()
    publisher = connect(broker.port, "publisher", broker.password("publisher"))
    try:
        publisher.publish(TOPICS["profile"], b'{"schema": "clock.profile/1"}', retain=True)
    finally:
        publisher.close()
    done = retire(broker, AGENT, "--no-revoke")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"left {TOPICS['profile']}: the publisher's" in done.stdout
    assert "clockfleet publish --prune" in done.stdout
    assert list(retained(broker)) == [TOPICS["profile"]]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ((AGENT,), "give --revoke-command"),
        (("pbx.7", "--no-revoke"), "is not an agent id"),
        ((AGENT, "--revoke-command", " "), "--revoke-command is empty"),
    ],
)
def test_retire_refuses_what_it_cannot_do_safely(broker: ShippedBroker, args: tuple, why: str):
    done = retire(broker, *args)
    assert done.returncode == 2
    assert why in done.stderr


def test_retire_as_the_operator_is_refused_before_anything_is_done(broker: ShippedBroker):
    agent_session(broker).close()
    before = retained(broker)
    done = retire(broker, AGENT, "--revoke-command", revoke_command(broker), identity="operator")
    assert done.returncode == 2
    assert "the identity `operator` may not clear an agent's status and report" in done.stderr
    assert "nothing was read, revoked or cleared" in done.stderr
    assert retained(broker) == before
    connect(broker.port, AGENT, broker.password(AGENT)).close()  # not revoked


def test_a_dry_run_as_the_operator_shows_the_plan_and_says_it_would_fail(broker: ShippedBroker):
    agent_session(broker).close()
    done = retire(broker, AGENT, "--dry-run", "--no-revoke", identity="operator")
    assert done.returncode == 2
    assert f"clear:  {TOPICS['status']} (retained," in done.stdout
    assert "would fail: the identity `operator` may not clear" in done.stderr


def test_retire_logs_in_as_retire_when_no_user_name_is_given(broker: ShippedBroker):
    agent_session(broker).close()
    flags = ["--broker", broker.url, "--password-file", str(broker.password_file("retire"))]
    done = subprocess.run(
        [sys.executable, "-m", "clockfleet", "retire", AGENT, "--no-revoke", *flags],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "CLOCKFLEET_CONNECTION": "", "CLOCKFLEET_USERNAME": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert retained(broker) == {}


# --- Alerts: keyed on the agent's series, which leave with it -------------------------------


@pytest.fixture
def prometheus() -> Iterator[object]:
    with prometheus_factory() as start:
        yield start


def agent_alerts(p: Prometheus) -> set[str]:
    """The alert rules of config/alerts.yml whose expression holds for the agent now."""
    rules = yaml.safe_load((REPO / "config" / "alerts.yml").read_text())
    firing = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and any(s.get("metric", {}).get("agent") == AGENT
                                       for s in p.query(rule["expr"])):  # fmt: skip
                firing.add(rule["alert"])
    return firing


def test_a_retired_agents_alerts_end_with_its_series(
    broker: ShippedBroker, collector: RunningCollector, prometheus
):
    """Prometheus marks a series stale at the first scrape without it: every expression over
    it is empty from then on, so each alert the agent had resolves."""
    p = prometheus(collector.url.split("/")[2])
    agent = agent_session(broker)
    agent.client.loop_stop()  # gone without a word: the broker sends its will
    agent.client.socket().close()
    p.wait_for(f'clockfleet_agent_online{{agent="{AGENT}"}} == 0', bool)
    assert "ClockfleetAgentOffline" in agent_alerts(p)
    done = retire(broker, AGENT, "--revoke-command", revoke_command(broker))
    assert done.returncode == 0, done.stdout + done.stderr
    p.wait_for(f'clockfleet_agent_online{{agent="{AGENT}"}}', lambda r: r == [])
    assert agent_alerts(p) == set()
