"""broker/bridges/make-bridges: what it writes, and the pitfalls of docs/bridges.md its
settings guard, shown on real Mosquitto where they can be (P1 stale retained config, P4 the
replay cap, P8 silent ACL drops). The brokers run what the generator writes for production
(devstack bridges.py: central and edge configs with only ports and paths replaced, identities
from broker/clockfleet-identities): every client logs in as the identity that program would
use. The cut pitfalls (P3/P5 lost deletes and reports, P7 reconnect time, P10 a SIGKILLed
central) are shown end to end in tests/e2e/test_bridge_cut.py.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from clockfleet.devstack import bridges
from clockfleet.devstack.bridges import CentralAndEdges
from clockfleet.devstack.mosquitto import IDENTITIES_TOOL, ROLES, ShippedBroker
from tests.broker.mqttclient import MqttProbe
from tests.broker.mqttclient import login_with as login
from tests.helpers import REPO

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


def test_edge_acl_grants_agents_their_patterns_and_every_role_nothing_but_retire(generated: Path):
    acl = (generated / "edge.acl").read_text()
    assert "pattern readwrite clock/v1/agents/%u/report" in acl.splitlines()
    # The roles the identities tool writes into every password file, the edge's too.
    listed = subprocess.run(
        [str(IDENTITIES_TOOL), "--out", str(generated / "no-identities"), "--list"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()  # fmt: skip
    assert {"collector-2", "retire"} <= set(listed)
    # retire clears a retired agent on its edge (else the bridge brings it back): broker/acl's
    # block, exactly.
    shipped = (REPO / "broker" / "acl").read_text()
    assert acl_block(acl, "retire") == acl_block(shipped, "retire")
    for role in [*(r for r in listed if r != "retire"), "reload.witness"]:
        assert acl_block(acl, role) == ["topic deny #"], role


def test_central_acl_lets_the_operator_alone_read_the_bridges_states(generated: Path):  # P8
    acl = (generated / "central.acl").read_text()
    assert "topic read $SYS/broker/connection/+/state" in acl_block(acl, "operator")
    for role in ("publisher", "collector", "collector-2"):
        assert not [line for line in acl_block(acl, role) if "$SYS" in line], role


def test_a_missing_bridge_password_names_the_identity_and_writes_nothing(tmp_path: Path):
    done = run("--out", str(tmp_path / "out"), "--central", "c:8883", "--identities",
               str(tmp_path), "--dc", "fra1")  # fmt: skip
    assert done.returncode == 2
    assert GEN.bridge_identity("fra1") in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_data_centre_name_with_a_wildcard_is_refused():
    done = run("--names", "--dc", "fra+1")
    assert done.returncode == 2 and "fra+1" in done.stderr


# --- On real Mosquitto, as generated --------------------------------------------------------


@pytest.fixture
def site(short_tmp: Path) -> Iterator[Callable[..., CentralAndEdges]]:
    """Central and one edge (dc1) as make-bridges writes them, bridged through a LinkProxy;
    agents pbx-01 and pbx-02 provisioned."""
    started: list[CentralAndEdges] = []

    def start(**kwargs) -> CentralAndEdges:
        kwargs.setdefault("agents", ["pbx-01", "pbx-02"])
        topo = bridges.start_central_and_edges(short_tmp / "site", edges=1, **kwargs)
        started.append(topo)
        return topo

    yield start
    for topo in started:
        topo.stop()


def close(*probes: MqttProbe) -> None:
    for p in probes:
        p.close()


def test_an_update_after_the_bridge_is_up_is_retained_on_the_edge(site):  # P1
    topo = site()
    topic = "clock/v1/regions/r1/servers"
    pub = login(topo.settings("publisher"))
    early = login(topo.settings("pbx-01", agent=0))
    late = None
    try:
        early.subscribe(topic, qos=1)
        pub.publish(topic, b'{"version": 1}', retain=True)
        pub.publish(topic, b'{"version": 2}', retain=True)
        assert early.wait(lambda: len(early.on(topic)) == 2), "both versions at the edge"
        late = login(topo.settings("pbx-02", agent=0))  # subscribes after the update
        late.subscribe(topic, qos=1)
        assert late.wait(lambda: late.on(topic)), "the retained list at a late subscriber"
        got = late.on(topic)
    finally:
        close(pub, early, *([late] if late else []))
    assert [(m.payload, m.retain) for m in got] == [(b'{"version": 2}', True)]


def test_the_edge_receives_every_retained_config_topic_beyond_the_1020_cap(site):  # P4
    n = 1500

    def fill(central: ShippedBroker) -> None:
        pub = login(central.settings("publisher"))
        try:
            for i in range(n - 1):
                pub.client.publish(f"clock/v1/regions/r{i}/servers", b"{}", qos=1, retain=True)
            pub.publish(f"clock/v1/regions/r{n - 1}/servers", b"{}", retain=True)  # the last ack
        finally:
            pub.close()

    topo = site(before_edges=fill)
    agent = login(topo.settings("pbx-01", agent=0))  # every agent reads every region's list
    try:
        agent.subscribe("clock/v1/regions/+/servers", qos=0)
        agent.wait(lambda: len(agent.topics()) >= n, timeout_s=20)
        got = agent.topics()
    finally:
        agent.close()
    assert len(got) == n


def report(agent: str) -> bytes:
    return json.dumps({"agent": agent}).encode()


def test_the_generated_acl_carries_an_edge_agents_report_to_central(site):  # P8
    topo = site()
    topic = "clock/v1/agents/pbx-01/report"
    collector = login(topo.settings("collector-2"))
    agent = login(topo.settings("pbx-01", agent=0))
    try:
        collector.subscribe("clock/v1/agents/+/report", qos=1)
        agent.publish(topic, report("pbx-01"), retain=True)
        assert collector.wait(lambda: collector.on(topic)), "the report on central"
    finally:
        close(collector, agent)


def test_a_missing_acl_line_drops_reports_silently_while_the_bridge_says_up(site):  # P8
    topo = site(
        without_acl_lines=["topic write clock/v1/agents/+/report"],
        why="shows what a missing line in the bridge's central ACL block does (P8): the "
        "bridge stays up while the reports it carries vanish",
    )
    assert topo.states().get("dc1") == "1"
    collector = login(topo.settings("collector-2"))
    agent = login(topo.settings("pbx-01", agent=0))
    try:
        collector.subscribe("clock/v1/agents/+/report", "clock/v1/agents/+/status", qos=1)
        agent.publish("clock/v1/agents/pbx-01/report", report("pbx-01"), retain=True)
        agent.publish("clock/v1/agents/pbx-01/status", report("pbx-01"), retain=True)
        # The status crosses after the report on the same bridge: once it is here, the
        # report would be too.
        assert collector.wait(lambda: collector.topics()), "the status (still granted)"
        got = collector.topics()
    finally:
        close(collector, agent)
    assert got == {"clock/v1/agents/pbx-01/status"}


def test_the_operator_on_central_sees_a_cut_bridge_go_down_and_come_back(site):  # P8
    topo = site()
    assert topo.states() == {"dc1": "1"}
    topo.cut(0)
    topo.wait_bridges(up=False, timeout_s=30)
    topo.restore(0)
    topo.wait_bridges(up=True, timeout_s=60)
    # Nobody else may read them: the collector's subscription delivers nothing.
    seen = bridges.watch_bridges(topo.settings("collector-2"), lambda s: bool(s), 1.0)
    assert seen == {}


def test_no_role_reaches_central_through_an_edge(site):
    """Every role has an identity in the edge's password file (the identities tool writes
    them all); the agents' %u patterns would let a role write its own agent topics there, and
    the bridge would carry that fake agent to central."""
    topo = site()
    # Each role is denied reading its own agent subtree on central, so two readers see all.
    readers = [login(topo.settings("operator")), login(topo.settings("collector-2"))]
    roles: list[MqttProbe] = []
    agent = login(topo.settings("pbx-01", agent=0))
    try:
        for r in readers:
            r.subscribe("clock/v1/agents/+/status", "clock/v1/agents/+/report", qos=1)
        for role in ROLES:
            p = login(topo.edge(0).settings(role))
            roles.append(p)
            p.publish(f"clock/v1/agents/{role}/status", report(role), retain=True)
            p.publish(f"clock/v1/agents/{role}/report", report(role), retain=True)
        # An agent's own status, after the roles' messages on the same bridge: once it is on
        # central, theirs would be too.
        agent.publish("clock/v1/agents/pbx-01/status", report("pbx-01"), retain=True)
        for r in readers:
            assert r.wait(lambda r=r: "clock/v1/agents/pbx-01/status" in r.topics())
        got = readers[0].topics() | readers[1].topics()
    finally:
        close(agent, *readers, *roles)
    assert got == {"clock/v1/agents/pbx-01/status"}


def config_lines(path: Path) -> set[str]:
    return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}


def test_central_and_edge_run_the_generated_configs_with_only_ports_and_paths_replaced(site):
    topo = site()
    generated = topo.rundir / "generated"
    running = {
        "central": config_lines(topo.central.daemon.files["conf"]),
        "edge": config_lines(topo.edge(0).daemon.files["conf"]),
    }
    files = {
        "password_file /etc/mosquitto/clockfleet/passwd",
        "cafile /etc/mosquitto/certs/ca.crt",
        "certfile /etc/mosquitto/certs/server.crt",
        "keyfile /etc/mosquitto/certs/server.key",
        "persistence_location /var/lib/mosquitto/",
        "log_dest file /var/log/mosquitto/mosquitto.log",
    }
    replaced = {
        "central": files | {
            "listener 8883", "listener 1883 127.0.0.1",
            "acl_file /etc/mosquitto/clockfleet/acl",
        },
        "edge": files | {
            "listener 8883", "acl_file /etc/mosquitto/clockfleet/edge.acl",
            f"address 127.0.0.1:{topo.central.tls_port}",  # each edge's relay instead
        },
    }  # fmt: skip
    for name, conf in (("central", "central.conf"), ("edge", "edge-dc1.conf")):
        written = config_lines(generated / conf)
        assert written - running[name] == replaced[name], name
        keys = {line.split()[0] for line in replaced[name]} | {"user"}  # user root, as root
        assert {line.split()[0] for line in running[name] - written} <= keys, name
