"""What NATS 2.9.10 does NOT do (broker/nats/README.md, "Client ids"): it binds no client id
to a user, so any identity that knows an agent's client id can take its session; and what
clockfleet does about it. The cluster: natskit.py."""

from __future__ import annotations

import json
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.devstack.nats import NatsCluster
from tests.agent.servicekit import hosted, make_agent
from tests.broker.mqttclient import MqttProbe, connect
from tests.broker.natskit import (
    CMD,
    STATUS,
    login,
    needs_nats,
)
from tests.helpers import wait_until

pytestmark = needs_nats


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


def leave_a_persistent_session(cluster: NatsCluster, agent: str, client_id: str) -> None:
    """`agent` subscribes to its commands at QoS 1 in a persistent session, then goes away:
    the session (and what is queued for it) stays with the broker."""
    victim = persistent_client(cluster, agent, client_id)
    subscribed = threading.Event()
    victim.on_connect = lambda c, u, f, rc, p: c.subscribe(CMD.format(agent), 1)
    victim.on_subscribe = lambda *a: subscribed.set()
    victim.connect("127.0.0.1", cluster.nodes[0].mqtt_port)
    victim.loop_start()
    assert subscribed.wait(10)
    victim.disconnect()
    victim.loop_stop()


def test_the_taker_of_an_agents_session_gets_none_of_the_agents_rights(cluster: NatsCluster):
    """Permissions belong to the user, not to the session: acme-01 holding acme-02's
    persistent session (its QoS 1 subscription to its commands included) can neither write
    acme-02's status nor receive its commands."""
    stolen = "clockfleet-agent-acme-02-rights"
    leave_a_persistent_session(cluster, "acme-02", stolen)

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
    leave_a_persistent_session(cluster, "acme-02", stolen)
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
