"""The NATS cluster's shipped security configuration: each identity gets exactly what the
Mosquitto ACL (broker/acl) gives it, on every node.

One 3-node cluster for the module, started as shipped: identities from
broker/clockfleet-identities, security.conf from broker/nats/make-security-conf. NATS speaks
MQTT 3.1.1 only, where a denied publish is still PUBACKed with code 0 and a denied SUBSCRIBE
gets SUBACK 0x80, so these tests assert what a second client receives and what each SUBACK
grants. Writer, witness and watcher share a node unless the test is about another node: one
node hands a client's messages on in the order it took them, so whatever a denied publish
delivered would have arrived before the witness's message that comes after it.

The client-id tests at the end document what NATS 2.9.10 does NOT do (broker/nats/README.md,
"Client ids"): it binds no client id to a user, so any identity can take an agent's session.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.devstack.nats import SECURITY_TOOL, NatsCluster, start_cluster
from clockfleet.protocol import codec
from tests.agent.servicekit import hosted, make_agent
from tests.broker.mqttclient import ConnectRefused, MqttProbe, connect
from tests.helpers import REPO, wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists(),
    reason="nats-server not installed (apt-get install nats-server)",
)

AGENTS = ("acme-01", "acme-02", "acme-03")
ROLES = ("publisher", "collector", "collector-2", "operator")
REGION = "clock/v1/regions/us-east/servers"
PROFILE = "clock/v1/agents/{}/profile"
STATUS = "clock/v1/agents/{}/status"
REPORT = "clock/v1/agents/{}/report"
CMD = "clock/v1/agents/{}/cmd"
GRANTED_QOS1 = 1
REFUSED = 0x80


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    rundir = Path(tempfile.mkdtemp(prefix="cf-natsperm-", dir="/tmp"))
    c = start_cluster(rundir / "cluster", agents=list(AGENTS))
    try:
        publish_fixtures(c)
        yield c
    finally:
        c.stop()
        shutil.rmtree(rundir, ignore_errors=True)


def login(c: NatsCluster, identity: str, node: int = 0, **kwargs) -> MqttProbe:
    return connect(
        c.nodes[node].mqtt_port, identity, c.password(identity), protocol=mqtt.MQTTv311, **kwargs
    )


def publish_fixtures(c: NatsCluster) -> None:
    pub = login(c, "publisher")
    try:
        for topic in (REGION, PROFILE.format("acme-01"), PROFILE.format("acme-02")):
            pub.publish(topic, f"payload of {topic}".encode(), retain=True)
    finally:
        pub.close()


def codes(suback: list) -> list[int]:
    return [c.value for c in suback]


def retained(c: NatsCluster, topic: str, node: int = 1) -> list[bytes]:
    """What a fresh reader (the operator) gets retained on `topic`, from another node."""
    reader = login(c, "operator", node)
    try:
        reader.subscribe(topic, CMD.format("acme-03"))
        reader.sync(CMD.format("acme-03"))
        return [m.payload for m in reader.on(topic) if m.retain]
    finally:
        reader.close()


def delivered(c: NatsCluster, writer: str, topic: str, *, node: int = 0) -> list[bytes]:
    """`writer` publishes to `topic` (retained); what a reader of that topic received by the
    time a later message of an agent arrived (nothing, when the publish was denied; what
    was retained before comes flagged so and is left out)."""
    watcher = login(c, "collector" if writer != "collector" else "collector-2", node)
    sender = login(c, writer, node)
    witness = login(c, "acme-03", node)
    try:
        assert REFUSED not in codes(watcher.subscribe(topic, STATUS.format("acme-03")))
        sender.publish(topic, f"written by {writer}".encode(), retain=True)
        witness.publish(STATUS.format("acme-03"), b"witness")
        assert watcher.wait(lambda: watcher.on(STATUS.format("acme-03"))), "no witness"
        return [m.payload for m in watcher.on(topic) if not m.retain]
    finally:
        witness.close()
        sender.close()
        watcher.close()


def delivered_to_operator(c: NatsCluster, writer: str, topic: str, node: int = 0) -> list[bytes]:
    """As delivered(), read by the operator (who alone reads commands): its own command to
    acme-03, sent after the writer's PUBACK, is the witness."""
    watcher = login(c, "operator", node)
    sender = login(c, writer, node)
    try:
        assert REFUSED not in codes(watcher.subscribe(topic, CMD.format("acme-03")))
        sender.publish(topic, f"written by {writer}".encode(), retain=True)
        watcher.sync(CMD.format("acme-03"))
        return [m.payload for m in watcher.on(topic) if not m.retain]
    finally:
        sender.close()
        watcher.close()


# --- Logging in ------------------------------------------------------------------------------


def test_anonymous_clients_are_refused(cluster: NatsCluster):
    with pytest.raises(ConnectRefused):
        connect(cluster.nodes[0].mqtt_port, protocol=mqtt.MQTTv311)


def test_a_wrong_password_is_refused(cluster: NatsCluster):
    with pytest.raises(ConnectRefused):
        connect(cluster.nodes[0].mqtt_port, "acme-01", "not-the-password", protocol=mqtt.MQTTv311)


@pytest.mark.parametrize("identity", ["acme-01", "operator"])
def test_the_identities_cannot_log_in_over_the_nats_protocol(cluster: NatsCluster, identity: str):
    """Over the NATS client port the QoS 1 delivery grant ($MQTT.sub.>) would let an
    identity read every client's deliveries: MQTT is the only way in."""
    with socket.create_connection(("127.0.0.1", cluster.nodes[0].client_port), timeout=5) as s:
        assert s.recv(4096).startswith(b"INFO ")
        hello = {"user": identity, "pass": cluster.password(identity), "verbose": False}
        s.sendall(f"CONNECT {json.dumps(hello)}\r\nPING\r\n".encode())
        answer = s.recv(4096)
    assert answer.startswith(b"-ERR 'Authorization Violation'"), answer


def test_the_config_holds_bcrypt_hashes_and_no_password(cluster: NatsCluster):
    text = (cluster.nodes[0].dir / "security.conf").read_text()
    identities = [*ROLES, *AGENTS]
    assert all(cluster.password(i) not in text for i in identities)
    hashes = [
        line.split('password: "', 1)[1][:4] for line in text.splitlines() if "password:" in line
    ]
    assert len(hashes) == len(identities) and set(hashes) == {"$2b$"}


def test_every_node_runs_the_same_security_conf(cluster: NatsCluster):
    texts = {(n.dir / "security.conf").read_text() for n in cluster.nodes}
    assert len(texts) == 1


# --- Agents ----------------------------------------------------------------------------------


def test_an_agent_cannot_publish_a_region_list(cluster: NatsCluster):
    assert delivered(cluster, "acme-01", REGION) == []
    assert retained(cluster, REGION) == [f"payload of {REGION}".encode()]


@pytest.mark.parametrize("topic", [PROFILE.format("acme-01"), CMD.format("acme-01")])
def test_an_agent_cannot_write_its_own_profile_or_commands(cluster: NatsCluster, topic: str):
    assert delivered_to_operator(cluster, "acme-01", topic) == []


@pytest.mark.parametrize("kind", ["status", "report", "profile", "cmd"])
def test_an_agent_cannot_write_under_another_agent(cluster: NatsCluster, kind: str):
    assert delivered_to_operator(cluster, "acme-01", f"clock/v1/agents/acme-02/{kind}") == []


@pytest.mark.parametrize("kind", ["status", "report"])
def test_an_agent_writes_its_own_status_and_report(cluster: NatsCluster, kind: str):
    topic = f"clock/v1/agents/acme-01/{kind}"
    assert delivered(cluster, "acme-01", topic) == [b"written by acme-01"]


def test_an_agent_reads_its_region_list_and_its_own_profile_only(cluster: NatsCluster):
    agent = login(cluster, "acme-02")
    operator = login(cluster, "operator")
    try:
        granted = agent.subscribe(
            REGION,
            "clock/v1/regions/+/servers",
            PROFILE.format("acme-02"),
            "clock/v1/agents/+/profile",
            PROFILE.format("acme-01"),
            CMD.format("acme-02"),
            qos=1,
        )
        assert codes(granted) == [GRANTED_QOS1, GRANTED_QOS1, GRANTED_QOS1, REFUSED, REFUSED, 1]
        operator.publish(CMD.format("acme-02"), b"sync")
        assert agent.wait(lambda: agent.on(CMD.format("acme-02")))
        assert agent.wait(lambda: len(agent.on(REGION)) == 2)  # two filters match it
        assert {m.payload for m in agent.on(REGION)} == {f"payload of {REGION}".encode()}
        assert agent.wait(lambda: agent.on(PROFILE.format("acme-02")))
        assert agent.on(PROFILE.format("acme-01")) == []
    finally:
        operator.close()
        agent.close()


@pytest.mark.parametrize("kind", ["status", "report", "cmd"])
def test_an_agent_cannot_read_another_agents_status_report_or_commands(
    cluster: NatsCluster, kind: str
):
    agent = login(cluster, "acme-02")
    try:
        granted = agent.subscribe(
            f"clock/v1/agents/acme-01/{kind}", f"clock/v1/agents/+/{kind}", qos=1
        )
        assert codes(granted) == [REFUSED, REFUSED]
    finally:
        agent.close()


@pytest.mark.parametrize("kind", ["status", "report"])
def test_an_agent_reads_back_its_own_retained_status_and_report(cluster: NatsCluster, kind: str):
    """How an agent that lost its state directory recovers its session counter."""
    topic = f"clock/v1/agents/acme-02/{kind}"
    writer = login(cluster, "acme-02")
    try:
        writer.publish(topic, f"my {kind}".encode(), retain=True)
    finally:
        writer.close()
    reader = login(cluster, "acme-02", node=2)
    try:
        assert codes(reader.subscribe(topic, qos=1)) == [GRANTED_QOS1]
        assert reader.wait(lambda: reader.on(topic))
        assert [m.payload for m in reader.on(topic)] == [f"my {kind}".encode()]
    finally:
        reader.close()


def test_an_agents_last_will_reaches_the_readers_of_its_status(cluster: NatsCluster):
    """The will is published with the agent's own rights: they must cover it."""
    watcher = login(cluster, "collector")
    try:
        watcher.subscribe(STATUS.format("acme-03"))
        agent = login(cluster, "acme-03", will=(STATUS.format("acme-03"), b"offline (will)"))
        agent.client.loop_stop()
        agent.client.socket().close()  # a crash: no DISCONNECT, so the will fires
        assert watcher.wait(lambda: b"offline (will)" in [m.payload for m in watcher.messages])
    finally:
        watcher.close()


def test_no_client_can_subscribe_to_the_qos1_delivery_subjects(cluster: NatsCluster):
    """Every identity holds $MQTT.sub.> (NATS delivers QoS 1 there, as the client itself);
    an MQTT client cannot name those subjects."""
    operator = login(cluster, "operator")
    try:
        assert codes(operator.subscribe("$MQTT/sub/#", "#", qos=0)) == [REFUSED, REFUSED]
    finally:
        operator.close()


# --- Publisher -------------------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["clock/v1/regions/eu-west/servers", PROFILE.format("acme-03")])
def test_the_publisher_writes_region_lists_and_profiles(cluster: NatsCluster, topic: str):
    assert delivered(cluster, "publisher", topic) == [b"written by publisher"]
    assert retained(cluster, topic) == [b"written by publisher"]


def test_the_publisher_reads_region_lists_profiles_and_reports(cluster: NatsCluster):
    """Lists and profiles: its version rule. Reports: a canary's verdict (docs/rollout.md)."""
    publisher = login(cluster, "publisher", node=1)
    agent = login(cluster, "acme-01", node=1)
    try:
        filters = ["clock/v1/regions/+/servers", "clock/v1/agents/+/profile"]
        granted = publisher.subscribe(*filters, "clock/v1/agents/+/report")
        assert codes(granted) == [0, 0, 0]
        agent.publish(REPORT.format("acme-01"), b"a report")
        assert publisher.wait(lambda: publisher.on(REPORT.format("acme-01")))
        assert publisher.wait(
            lambda: publisher.on(REGION) and publisher.on(PROFILE.format("acme-01"))
        )
    finally:
        agent.close()
        publisher.close()


@pytest.mark.parametrize("kind", ["status", "report"])
def test_the_publisher_cannot_write_an_agents_status_or_report(cluster: NatsCluster, kind: str):
    assert delivered(cluster, "publisher", f"clock/v1/agents/acme-01/{kind}") == []


@pytest.mark.parametrize("kind", ["status", "cmd"])
def test_the_publisher_cannot_read_statuses_or_commands(cluster: NatsCluster, kind: str):
    publisher = login(cluster, "publisher")
    try:
        assert codes(publisher.subscribe(f"clock/v1/agents/+/{kind}")) == [REFUSED]
    finally:
        publisher.close()


@pytest.mark.parametrize("role", ["publisher", "collector", "collector-2"])
def test_only_the_operator_sends_commands(cluster: NatsCluster, role: str):
    agent = login(cluster, "acme-01")
    sender = login(cluster, role)
    operator = login(cluster, "operator")
    try:
        agent.subscribe(CMD.format("acme-01"), qos=1)
        sender.publish(CMD.format("acme-01"), b"forged")
        operator.publish(CMD.format("acme-01"), b"real")
        assert agent.wait(lambda: agent.on(CMD.format("acme-01")))
        time.sleep(0.2)  # QoS 1 deliveries come through JetStream: give a forged one time
        assert [m.payload for m in agent.on(CMD.format("acme-01"))] == [b"real"]
    finally:
        operator.close()
        sender.close()
        agent.close()


# --- Collectors ------------------------------------------------------------------------------


@pytest.mark.parametrize("node", [0, 1, 2])
@pytest.mark.parametrize("role", ["collector", "collector-2"])
def test_a_collector_cannot_write_a_region_list(cluster: NatsCluster, role: str, node: int):
    assert delivered_to_operator(cluster, role, REGION, node) == []
    assert retained(cluster, REGION, node=(node + 1) % 3) == [f"payload of {REGION}".encode()]


@pytest.mark.parametrize(
    "topic",
    [PROFILE.format("acme-01"), STATUS.format("acme-01"), REPORT.format("acme-01")],
)
@pytest.mark.parametrize("role", ["collector", "collector-2"])
def test_a_collector_writes_nothing(cluster: NatsCluster, role: str, topic: str):
    assert delivered_to_operator(cluster, role, topic) == []


@pytest.mark.parametrize("role", ["collector", "collector-2"])
def test_a_collector_reads_lists_profiles_statuses_and_reports_but_not_commands(
    cluster: NatsCluster, role: str
):
    collector = login(cluster, role)
    try:
        granted = collector.subscribe(
            "clock/v1/regions/+/servers",
            "clock/v1/agents/+/profile",
            "clock/v1/agents/+/status",
            "clock/v1/agents/+/report",
            "clock/v1/agents/+/cmd",
            qos=1,
        )
        assert codes(granted) == [1, 1, 1, 1, REFUSED]
    finally:
        collector.close()


# --- Operator --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic", [REGION, PROFILE.format("acme-01"), STATUS.format("acme-01"), REPORT.format("acme-01")]
)
def test_the_operator_writes_only_commands(cluster: NatsCluster, topic: str):
    assert delivered(cluster, "operator", topic) == []


def test_the_operator_reads_everything_under_the_prefix(cluster: NatsCluster):
    operator = login(cluster, "operator", node=2)
    try:
        assert codes(operator.subscribe("clock/v1/#", qos=1)) == [GRANTED_QOS1]
        assert operator.wait(
            lambda: (
                {REGION, PROFILE.format("acme-01"), PROFILE.format("acme-02")} <= operator.topics()
            )
        )
    finally:
        operator.close()


def test_clockfleet_status_runs_as_the_operator(cluster: NatsCluster):
    status = {
        "schema": "clock.status/1", "agent": "acme-03", "state": "online", "software": "0.1.0",
        "region": "us-east", "session": 1, "since": codec.utcnow_iso(),
    }  # fmt: skip
    agent = login(cluster, "acme-03")
    try:
        agent.publish(STATUS.format("acme-03"), json.dumps(status).encode(), retain=True)
    finally:
        agent.close()
    done = subprocess.run(
        [sys.executable, "-m", "clockfleet", "status", "--json", *cluster.login("operator")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert "acme-03" in [r.get("agent") for r in rows], rows


def test_clockfleet_rollout_status_runs_as_the_operator(cluster: NatsCluster):
    command = [sys.executable, "-m", "clockfleet", "rollout", "status", "--json"]
    done = subprocess.run(
        [*command, *cluster.login("operator")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "regions" in json.loads(done.stdout)


# --- Roles named like agents -----------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("kind", ["status", "report"])
def test_a_role_cannot_write_as_an_agent_named_like_it(cluster: NatsCluster, role: str, kind: str):
    watcher_role = "collector" if role != "collector" else "collector-2"
    topic = f"clock/v1/agents/{role}/{kind}"
    watcher = login(cluster, watcher_role)
    writer = login(cluster, role)
    witness = login(cluster, "acme-01")
    try:
        watcher.subscribe(f"clock/v1/agents/+/{kind}")
        writer.publish(topic, b"{}", retain=True)
        witness.publish(f"clock/v1/agents/acme-01/{kind}", b"{}")
        assert watcher.wait(lambda: watcher.on(f"clock/v1/agents/acme-01/{kind}"))
        assert watcher.on(topic) == []
    finally:
        witness.close()
        writer.close()
        watcher.close()


# --- Adding agents: regenerate, reload ---------------------------------------------------------


def test_an_agent_added_later_logs_in_on_every_node_without_a_restart(cluster: NatsCluster):
    pids = [n.daemon.proc.pid for n in cluster.nodes]  # type: ignore[union-attr]
    cluster.add("acme-10")
    assert [n.daemon.proc.pid for n in cluster.nodes] == pids  # type: ignore[union-attr]
    for node in range(3):
        login(cluster, "acme-10", node).close()


def test_adding_an_agent_keeps_the_connected_clients(cluster: NatsCluster):
    collector = login(cluster, "collector", node=1)
    try:
        cluster.add("acme-11")
        agent = login(cluster, "acme-11", node=1)
        try:
            collector.subscribe(REPORT.format("acme-11"))
            agent.publish(REPORT.format("acme-11"), b"new host")
            assert collector.wait(lambda: collector.on(REPORT.format("acme-11")))
        finally:
            agent.close()
        assert collector.disconnects == []
    finally:
        collector.close()


# --- make-security-conf ------------------------------------------------------------------------


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SECURITY_TOOL), *args], capture_output=True, text=True, timeout=60
    )


def test_make_security_conf_refuses_a_short_password(tmp_path: Path):
    for role in ROLES:
        (tmp_path / f"{role}.password").write_text("x" * 32 + "\n")
    (tmp_path / "acme-01.password").write_text("hunter2\n")
    done = run_tool("--identities", str(tmp_path), "--out", str(tmp_path / "security.conf"))
    assert done.returncode == 2
    assert "acme-01.password: password shorter than" in done.stderr
    assert not (tmp_path / "security.conf").exists()


def test_make_security_conf_refuses_identities_without_the_roles(tmp_path: Path):
    (tmp_path / "acme-01.password").write_text("x" * 32 + "\n")
    done = run_tool("--identities", str(tmp_path), "--out", str(tmp_path / "security.conf"))
    assert done.returncode == 2
    assert "no publisher.password" in done.stderr


def test_make_security_conf_follows_the_prefix(tmp_path: Path):
    for name in (*ROLES, "acme-01"):
        (tmp_path / f"{name}.password").write_text("x" * 32 + "\n")
    out = tmp_path / "security.conf"
    done = run_tool("--identities", str(tmp_path), "--out", str(out), "--prefix", "fleet/v2")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert '"fleet.v2.agents.acme-01.report"' in text and "clock.v1" not in text


def masked(text: str) -> list[str]:
    """The file's lines without what differs between two runs: hashes, the source path."""
    out = []
    for line in text.splitlines():
        if line.startswith("# EXAMPLE"):
            continue
        line = re.sub(r'password: "[^"]*"', 'password: "HASH"', line)
        out.append(re.sub(r"^# from .* \(prefix", "# from DIR (prefix", line))
    return out


def test_the_shipped_example_is_what_make_security_conf_writes(tmp_path: Path):
    for name in (*ROLES, "acme-01", "acme-02"):
        (tmp_path / f"{name}.password").write_text("x" * 32 + "\n")
    out = tmp_path / "security.conf"
    assert run_tool("--identities", str(tmp_path), "--out", str(out)).returncode == 0
    example = REPO / "broker" / "nats" / "security.conf.example"
    assert masked(example.read_text()) == masked(out.read_text())


# --- The monitoring port ---------------------------------------------------------------------


def test_the_monitoring_port_shows_a_connected_mqtt_clients_password(cluster: NatsCluster):
    """NATS 2.9.10 keeps an MQTT client's password as the connection's JWT
    (server/mqtt.go: c.opts.JWT = c.opts.Password) and /connz?auth=true prints it
    (server/monitor.go: ci.JWT = client.opts.JWT): whoever reaches the http port can log in
    as every connected identity. Hence node.conf.template's http on loopback only."""
    agent = login(cluster, "acme-02", node=2, client_id="shown-on-connz")
    try:
        conns = cluster.nodes[2].monitor("/connz?auth=true&limit=1024")["connections"]
        mine = [c for c in conns if c.get("mqtt_client") == "shown-on-connz"]
        assert [c.get("jwt") for c in mine] == [cluster.password("acme-02")]
    finally:
        agent.close()


# --- Client ids: NATS 2.9.10 binds none to a user ---------------------------------------------


def takeover_log_lines(c: NatsCluster, client_id: str) -> list[str]:
    lines = []
    for n in c.nodes:
        lines += [
            line
            for line in n.daemon.log.read_text(errors="replace").splitlines()  # type: ignore[union-attr]
            if "same client ID" in line and client_id in line
        ]
    return lines


@pytest.mark.parametrize("attacker_node", [0, 1], ids=["same-node", "other-node"])
def test_nats_2_9_binds_no_client_id_another_agent_takes_over_an_agents_session(
    cluster: NatsCluster, attacker_node: int
):
    """What Mosquitto's use_username_as_clientid prevents, NATS 2.9.10 does: acme-01
    connects with acme-02's client id and acme-02 is disconnected."""
    stolen = f"clockfleet-agent-acme-02-{attacker_node}"
    victim = login(cluster, "acme-02", 0, client_id=stolen)
    try:
        attacker = login(cluster, "acme-01", attacker_node, client_id=stolen)
        try:
            assert victim.wait(lambda: victim.disconnects != [])
            assert takeover_log_lines(cluster, stolen)
        finally:
            attacker.close()
    finally:
        victim.close()


def test_connz_names_the_user_behind_an_agents_client_id(cluster: NatsCluster):
    """The one trace of a thief that names it (the takeover's log line names only the client
    id): /connz?auth=true on the node it is connected to, while it is connected."""
    thief = login(cluster, "acme-01", node=1, client_id="clockfleet-agent-acme-02-connz")
    try:
        conns = cluster.nodes[1].monitor("/connz?auth=true&limit=1024")["connections"]
        holders = [
            c.get("authorized_user")
            for c in conns
            if c.get("mqtt_client") == "clockfleet-agent-acme-02-connz"
        ]
        assert holders == ["acme-01"]
    finally:
        thief.close()


@pytest.mark.parametrize("attacker_node", [0, 1], ids=["same-node", "other-node"])
def test_a_client_id_takeover_fires_no_will_for_the_victim(
    cluster: NatsCluster, attacker_node: int
):
    """NATS 2.9.10 drops the old connection's will on a takeover (server/mqtt.go: on the same
    node it clears it; from another node the session is detached first): no false
    `offline` status, unlike Mosquitto without the binding."""
    stolen = f"clockfleet-agent-acme-02-will-{attacker_node}"
    watcher = login(cluster, "operator")
    try:
        watcher.subscribe(STATUS.format("acme-02"), CMD.format("acme-03"))
        victim = login(
            cluster, "acme-02", 0, client_id=stolen, will=(STATUS.format("acme-02"), b"WILL")
        )
        victim.client.reconnect_delay_set(30, 60)  # stay off: one takeover, one close
        try:
            attacker = login(cluster, "acme-01", attacker_node, client_id=stolen)
            try:
                assert victim.wait(lambda: victim.disconnects != [])
                time.sleep(0.5)  # the old connection's close (and any will) runs on the server
                watcher.sync(CMD.format("acme-03"))
                assert b"WILL" not in [m.payload for m in watcher.on(STATUS.format("acme-02"))]
            finally:
                attacker.close()
        finally:
            victim.close()
    finally:
        watcher.close()


def persistent_client(c: NatsCluster, identity: str, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.username_pw_set(identity, c.password(identity))
    return client


def test_the_taker_of_an_agents_session_gets_none_of_the_agents_rights(cluster: NatsCluster):
    """Permissions belong to the user, not to the session: acme-01 holding acme-02's
    persistent session (its QoS 1 subscription to its commands included) can neither write
    acme-02's status nor receive its commands."""
    stolen = "clockfleet-agent-acme-02-rights"
    victim = persistent_client(cluster, "acme-02", stolen)
    subscribed = threading.Event()
    victim.on_connect = lambda c, u, f, rc, p: c.subscribe(CMD.format("acme-02"), 1)
    victim.on_subscribe = lambda *a: subscribed.set()
    victim.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
    victim.loop_start()
    assert subscribed.wait(10)
    victim.disconnect()
    victim.loop_stop()

    watcher = login(cluster, "operator")
    attacker = persistent_client(cluster, "acme-01", stolen)
    got: list[str] = []
    present = threading.Event()
    attacker.on_connect = lambda c, u, f, rc, p: f.session_present and present.set()
    attacker.on_message = lambda c, u, m: got.append(m.topic)
    attacker.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
    attacker.loop_start()
    try:
        assert present.wait(10), "acme-01 did not get acme-02's session"
        watcher.subscribe(STATUS.format("acme-02"), CMD.format("acme-03"))
        attacker.publish(STATUS.format("acme-02"), b"forged status", qos=1).wait_for_publish(10)
        watcher.publish(CMD.format("acme-02"), b"for acme-02 only")
        watcher.sync(CMD.format("acme-03"))
        time.sleep(0.3)  # a QoS 1 delivery through JetStream would be out by now
        assert [m.payload for m in watcher.on(STATUS.format("acme-02")) if not m.retain] == []
        assert got == []
    finally:
        attacker.disconnect()
        attacker.loop_stop()
        watcher.close()


def test_a_clean_session_takeover_discards_the_agents_queued_commands(cluster: NatsCluster):
    """A thief connecting with the agent's client id and a clean session wipes the agent's
    persistent session: a command queued for it while it was away never arrives (its
    subscriptions it makes again on every connect; what was queued is gone)."""
    stolen = "clockfleet-agent-acme-02-queued"
    victim = persistent_client(cluster, "acme-02", stolen)
    subscribed = threading.Event()
    victim.on_connect = lambda c, u, f, rc, p: c.subscribe(CMD.format("acme-02"), 1)
    victim.on_subscribe = lambda *a: subscribed.set()
    victim.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
    victim.loop_start()
    assert subscribed.wait(10)
    victim.disconnect()
    victim.loop_stop()
    operator = login(cluster, "operator")
    try:
        operator.publish(CMD.format("acme-02"), b"queued while away")
    finally:
        operator.close()
    thief = connect(
        cluster.nodes[1].mqtt_port, "acme-01", cluster.password("acme-01"),
        protocol=mqtt.MQTTv311, client_id=stolen,
    )  # fmt: skip
    thief.close()
    time.sleep(1.2)  # NATS holds a client id that returns within 1 s of a takeover
    back = persistent_client(cluster, "acme-02", stolen)
    got: list[bytes] = []
    present: list[bool] = []
    back.on_connect = lambda c, u, f, rc, p: present.append(f.session_present)
    back.on_message = lambda c, u, m: got.append(m.payload)
    back.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
    back.loop_start()
    try:
        wait_until(lambda: present, timeout_s=10, what="the agent's CONNACK")
        time.sleep(1.0)  # a queued QoS 1 command would be redelivered by now
        assert present == [False]
        assert got == []
    finally:
        back.disconnect()
        back.loop_stop()


def _agent_sessions(watcher: MqttProbe, agent_id: str) -> list[int]:
    out = []
    for m in watcher.on(STATUS.format(agent_id)):
        with_session = json.loads(m.payload) if m.payload.startswith(b"{") else {}
        if with_session.get("state") == "online":
            out.append(with_session["session"])
    return out


def _thief(cluster: NatsCluster, client_id: str) -> mqtt.Client:
    """acme-01 reusing `client_id`, with paho's reconnect, as any agent's service would."""
    thief = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    thief.username_pw_set("acme-01", cluster.password("acme-01"))
    thief.reconnect_delay_set(0.05, 0.3)
    thief.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
    thief.loop_start()
    return thief


def test_an_agent_whose_client_id_is_reused_counts_a_new_session_on_every_return(
    cluster: NatsCluster,
):
    """What the takeover costs a real agent whose client id is known (read from the node's
    /connz, which only an operator on the node's host reaches): acme-04's id used by
    acme-01 knocks it off again and again; each return is a new connection, announced with
    `session` + 1. Readers see a flapping agent whose reports wait for the gaps; NATS's 1 s
    jail for a returning client id paces it."""
    watcher = login(cluster, "operator")
    agent = make_agent(cluster, "acme-04", brokers=cluster.nodes[0].url)
    try:
        watcher.subscribe(STATUS.format("acme-04"))
        with hosted(agent):
            wait_until(lambda: _agent_sessions(watcher, "acme-04"), 15, "the first online")
            first = max(_agent_sessions(watcher, "acme-04"))
            thief = _thief(cluster, agent.link.client_id)
            try:
                wait_until(
                    lambda: max(_agent_sessions(watcher, "acme-04")) >= first + 3,
                    timeout_s=30,
                    what="three returns",
                )
            finally:
                thief.disconnect()
                thief.loop_stop()
    finally:
        watcher.close()


def test_the_agents_client_id_is_not_its_agent_id_so_a_thief_cannot_name_it(
    cluster: NatsCluster,
):
    """The mitigation: an agent's client id carries a tag derived from its own password
    (connection.unguessable_client_id), so another agent that reuses the name it can guess
    (`clockfleet-agent-acme-05`) takes over nothing."""
    watcher = login(cluster, "operator")
    agent = make_agent(cluster, "acme-05", brokers=cluster.nodes[0].url)
    try:
        watcher.subscribe(STATUS.format("acme-05"))
        with hosted(agent):
            wait_until(lambda: _agent_sessions(watcher, "acme-05"), 15, "the first online")
            assert agent.link.client_id.startswith("clockfleet-agent-acme-05-")
            assert agent.link.client_id != "clockfleet-agent-acme-05"
            thief = _thief(cluster, "clockfleet-agent-acme-05")
            try:
                wait_until(thief.is_connected, timeout_s=10, what="the thief's CONNACK")
                time.sleep(4)  # the takeover above shows three returns within this
                assert _agent_sessions(watcher, "acme-05") == [1]
                assert agent.counters["broker-lost"] == 0
            finally:
                thief.disconnect()
                thief.loop_stop()
    finally:
        watcher.close()
