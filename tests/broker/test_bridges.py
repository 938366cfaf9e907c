"""broker/bridges/make-bridges: what it writes, and the pitfalls of research/bridges.md its
settings guard, shown on real Mosquitto where they can be (P1 stale retained config, P4 the
replay cap, P8 silent ACL drops). The cut pitfalls (P3/P5 lost deletes and reports, P7
reconnect time, P10 a SIGKILLed central) are shown end to end in tests/e2e/test_bridge_cut.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import bridges, devstack
from tests.helpers import REPO, wait_until

SCRIPT = REPO / "broker" / "bridges" / "make-bridges"
GEN = bridges.generator()
DCS = ["fra1", "ams2"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    ids = tmp_path / "ids"
    ids.mkdir()
    for dc in DCS:
        (ids / f"{GEN.bridge_identity(dc)}.password").write_text(f"secret-{dc}\n")
    out = tmp_path / "out"
    done = run("--out", str(out), "--central", "central.example.net:8883", "--identities", str(ids),
               *[a for dc in DCS for a in ("--dc", dc)])  # fmt: skip
    assert done.returncode == 0, done.stderr
    return out


def bridge_topics(conf: str) -> list[tuple[str, str, str]]:
    return [tuple(line.split()[1:4]) for line in conf.splitlines() if line.startswith("topic ")]


def acl_block(acl: str, user: str) -> list[str]:
    lines, inside = [], False
    for line in acl.splitlines():
        if line.startswith("user "):
            inside = line == f"user {user}"
        elif inside and line.startswith("topic "):
            lines.append(line)
    return lines


# --- What the generator writes ---------------------------------------------------------------


def test_each_data_centre_gets_an_edge_config_with_its_bridge_password_private(generated: Path):
    for dc in DCS:
        conf = generated / f"edge-{dc}.conf"
        assert f"remote_password secret-{dc}" in conf.read_text()
        assert conf.stat().st_mode & 0o777 == 0o600


def test_central_acl_grants_each_bridge_exactly_the_directions_of_its_topics(generated: Path):
    acl = (generated / "central.acl").read_text()
    for dc in DCS:
        wanted = {
            f"topic {'read' if direction == 'in' else 'write'} {topic}"
            for topic, direction, _ in bridge_topics((generated / f"edge-{dc}.conf").read_text())
        }
        ident = GEN.bridge_identity(dc)
        wanted |= {
            f"topic deny clock/v1/agents/{ident}/#",
            f"topic write $SYS/broker/connection/bridge-{dc}/state",
        }
        assert set(acl_block(acl, ident)) == wanted


def test_config_flows_only_in_and_reports_only_out_at_qos_1(generated: Path):
    topics = bridge_topics((generated / "edge-fra1.conf").read_text())
    assert sorted(topics) == sorted(
        [(t, "in", "1") for t in ("clock/v1/regions/+/servers", "clock/v1/agents/+/profile",
                                  "clock/v1/agents/+/cmd")]
        + [(t, "out", "1") for t in ("clock/v1/agents/+/report", "clock/v1/agents/+/status")]
    )  # fmt: skip


@pytest.mark.parametrize(
    "line",
    [
        "try_private true",  # P1: updates keep the retain flag on the edge
        "bridge_protocol_version mqttv311",  # P3: MQTT 5 bridges lose the session in 2.0.11
        "cleansession false",  # P5: a clean session loses queued reports and deletes
        "notifications true",  # P8: the bridge's state is visible on central
    ],
)
def test_edge_config_sets_the_bridge_option_its_pitfall_needs(generated: Path, line: str):
    assert line in (generated / "edge-fra1.conf").read_text().splitlines()


def test_a_changed_topic_set_is_a_new_bridge_identity(monkeypatch):  # P2
    before = GEN.bridge_identity("fra1")
    monkeypatch.setattr(GEN, "OUT_TOPICS", ("agents/+/report",))
    assert GEN.bridge_identity("fra1") != before
    monkeypatch.undo()
    assert GEN.bridge_identity("fra1") == before


def test_central_queue_exceeds_the_retained_config_topics(generated: Path):  # P4
    conf = (generated / "central.conf").read_text().splitlines()
    queue = [int(line.split()[1]) for line in conf if line.startswith("max_queued_messages ")]
    assert len(queue) == 1 and queue[0] > GEN.DEFAULT_CONFIG_TOPICS
    assert GEN.central_queue(300_000) == 600_000


def test_central_autosaves_every_second(generated: Path):  # P10
    assert "autosave_interval 1" in (generated / "central.conf").read_text().splitlines()


def test_edge_queue_holds_every_agents_requeued_retained_messages():  # P6
    text = GEN.edge_settings(50_000)
    assert "max_queued_messages 500000" in text.splitlines()


def test_edge_acl_grants_agents_their_patterns_and_the_roles_nothing(generated: Path):
    acl = (generated / "edge.acl").read_text()
    assert "pattern readwrite clock/v1/agents/%u/report" in acl.splitlines()
    assert acl_block(acl, "publisher") == ["topic deny #"]


def test_a_missing_bridge_password_names_the_identity_and_writes_nothing(tmp_path: Path):
    done = run("--out", str(tmp_path / "out"), "--central", "c:8883", "--identities",
               str(tmp_path), "--dc", "fra1")  # fmt: skip
    assert done.returncode == 2
    assert GEN.bridge_identity("fra1") in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_data_centre_name_with_a_wildcard_is_refused():
    done = run("--names", "--dc", "fra+1")
    assert done.returncode == 2 and "fra+1" in done.stderr


# --- On real Mosquitto -----------------------------------------------------------------------


class Probe:
    """A plain client on one broker noting every message (and its retain flag)."""

    def __init__(self, daemon: devstack.Daemon, *filters: str) -> None:
        self.got: list[tuple[str, bytes, bool]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, m.payload, m.retain))
        self.c.connect(daemon.host, daemon.port)
        for f in filters:
            self.c.subscribe(f, qos=1)
        self.c.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = True) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def pair(short_tmp: Path):
    """Central and one edge (dc1), bridged as generated, no relay."""
    started: list[devstack.Daemon] = []

    def start(skip_acl_lines: tuple[str, ...] = (), before_edge=None):
        passwords = {"dc1": "pw-dc1"}
        central = bridges.start_central(
            short_tmp, ["dc1"], passwords, skip_acl_lines=skip_acl_lines
        )
        started.append(central)
        if before_edge is not None:
            before_edge(central)
        edge = bridges.start_edge(short_tmp, "dc1", (central.host, central.port), "pw-dc1")
        started.append(edge)
        wait_until(lambda: bridges.bridge_states(edge.host, edge.port).get("dc1") == "1")
        return central, edge

    yield start
    for d in reversed(started):
        d.stop()


def test_an_update_after_the_bridge_is_up_is_retained_on_the_edge(pair):  # P1
    central, edge = pair()
    topic = "clock/v1/regions/r1/servers"
    pub = Probe(central)
    early = Probe(edge, topic)
    pub.publish(topic, b'{"version": 1}')
    pub.publish(topic, b'{"version": 2}')
    wait_until(lambda: len(early.got) == 2, what="both versions at the edge")
    late = Probe(edge, topic)  # subscribes after the update: must get it, retained
    try:
        wait_until(lambda: late.got, what="the retained list at a late subscriber")
        assert late.got == [(topic, b'{"version": 2}', True)]
    finally:
        for p in (pub, early, late):
            p.close()


def test_the_edge_receives_every_retained_config_topic_beyond_the_1020_cap(pair):  # P4
    n = 1500

    def fill(central: devstack.Daemon) -> None:
        pub = Probe(central)
        for i in range(n):
            pub.c.publish(f"clock/v1/agents/a{i}/profile", b"{}", qos=1, retain=True)
        pub.publish("clock/v1/regions/last/servers", b"{}")
        pub.close()

    _, edge = pair(before_edge=fill)
    probe = Probe(edge, "clock/v1/agents/+/profile")
    try:
        wait_until(lambda: len(probe.got) >= n, timeout_s=20, what=f"{n} profiles at the edge")
    finally:
        probe.close()
    assert len({t for t, _, _ in probe.got}) == n


def report(agent: str) -> bytes:
    return json.dumps({"agent": agent}).encode()


def test_the_generated_acl_carries_an_edge_agents_report_to_central(pair):  # P8
    central, edge = pair()
    seen = Probe(central, "clock/v1/agents/+/report")
    agent = Probe(edge)
    try:
        agent.publish("clock/v1/agents/pbx-01/report", report("pbx-01"))
        wait_until(lambda: seen.got, what="the report on central")
    finally:
        seen.close()
        agent.close()


def test_a_missing_acl_line_drops_reports_silently_while_the_bridge_says_up(pair):  # P8
    ident = GEN.bridge_identity("dc1")
    central, edge = pair(skip_acl_lines=("topic write clock/v1/agents/+/report",))
    assert bridges.bridge_states(central.host, central.port).get("dc1") == "1"
    seen = Probe(central, "clock/v1/agents/+/report", "clock/v1/agents/+/status")
    agent = Probe(edge)
    try:
        agent.publish("clock/v1/agents/pbx-01/report", report("pbx-01"))
        agent.publish("clock/v1/agents/pbx-01/status", report("pbx-01"))
        wait_until(lambda: seen.got, what="the status (still granted) on central")
    finally:
        seen.close()
        agent.close()
    assert [t for t, _, _ in seen.got] == ["clock/v1/agents/pbx-01/status"], ident
