"""Helpers for the agent service tests: a signing key, a plain paho publisher that writes
lists and profiles in the contract's format, a watcher that collects what agents publish,
and agents hosted on a Fleet with jitter and start-up delay 0."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.agent.backend_choice import make_backend
from clockfleet.agent.fleet import Fleet
from clockfleet.agent.probe import ProbeSettings
from clockfleet.agent.service import Agent, AgentSettings
from clockfleet.agent.state import StateDir
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.devstack.topologies import Topology
from clockfleet.protocol import codec, signing
from clockfleet.protocol.connection import ConnectionSettings, parse_brokers
from tests.helpers import wait_until

PREFIX = "clock/v1"


@dataclass
class Keys:
    key: signing.SigningKey
    pub: Path
    trust: signing.TrustStore


def make_keys(directory: Path, key_id: str = "ops-test") -> Keys:
    priv, pub = signing.generate(directory, key_id)
    return Keys(signing.load_signing_key(priv), pub, signing.load_trust([pub]))


def list_object(region: str, version: int, servers: list[tuple[str, int]], **extra) -> dict:
    obj = {
        "schema": "clock.servers/1",
        "region": region,
        "version": version,
        "issued_at": codec.utcnow_iso(),
        "servers": [{"host": h, "port": p} for h, p in servers],
    }
    obj.update(extra)
    return obj


def profile_object(agent: str, region: str, timezone: str, version: int) -> dict:
    return {
        "schema": "clock.profile/1",
        "agent": agent,
        "region": region,
        "timezone": timezone,
        "version": version,
        "issued_at": codec.utcnow_iso(),
    }


def paho_client(broker: ShippedBroker, identity: str, **kwargs: Any) -> mqtt.Client:
    """A paho client logged in as `identity` on the broker's plain loopback listener (its
    client id is the identity's name there: the shipped config binds them)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity, **kwargs)
    client.username_pw_set(identity, broker.password(identity))
    client.reconnect_delay_set(0.1, 0.5)
    return client


class Publisher:
    """A plain paho client logged in as `publisher` (the role that writes lists and
    profiles), as any operator tool would write the contract's messages; commands go out
    as `operator`."""

    def __init__(
        self, broker: ShippedBroker, keys: Keys | None, identity: str = "publisher"
    ) -> None:
        self.keys = keys
        self.broker = broker
        self.operator: mqtt.Client | None = None
        self.client = paho_client(broker, identity)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def raw(self, topic: str, payload: bytes | str, retain: bool = True) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def signed(self, obj: dict) -> bytes:
        assert self.keys is not None
        return json.dumps(signing.sign(obj, self.keys.key)).encode()

    def server_list(self, region: str, version: int, servers, *, topic_region=None, **extra):
        obj = list_object(region, version, servers, **extra)
        self.raw(f"{PREFIX}/regions/{topic_region or region}/servers", self.signed(obj))
        return obj

    def profile(self, agent: str, region: str, timezone: str, version: int) -> dict:
        obj = profile_object(agent, region, timezone, version)
        self.raw(f"{PREFIX}/agents/{agent}/profile", self.signed(obj))
        return obj

    def resync(self, agent: str) -> None:
        self.command(agent, b'{"schema":"clock.cmd/1","command":"resync"}')

    def command(self, agent: str, payload: bytes) -> None:
        """A command to one agent, sent as `operator` (the only role the ACL lets send them)."""
        if self.operator is None:
            self.operator = paho_client(self.broker, "operator")
            self.operator.connect(self.broker.host, self.broker.port)
            self.operator.loop_start()
        topic = f"{PREFIX}/agents/{agent}/cmd"
        self.operator.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        for client in (self.client, self.operator):
            if client is not None:
                client.disconnect()  # first: it wakes paho's loop thread: loop_stop is quick
                client.loop_stop()


@dataclass
class Watcher:
    """Collects every message on a topic filter (QoS 1; persistent session if asked), logged
    in as `identity`: `collector-2` reads lists, profiles, statuses and reports; a second
    watcher in one test needs another reader (`collector`, or `operator`, who reads all)."""

    broker: ShippedBroker
    topic: str
    identity: str = "collector-2"
    persistent: bool = False
    messages: list[tuple[str, bytes, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho_client(self.broker, self.identity, clean_session=not self.persistent)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, 1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(10), "watcher did not subscribe"

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

    def payloads(self) -> list[dict]:
        with self._lock:
            return [json.loads(p) for _, p, _ in self.messages if p]

    def wait_for(self, predicate: Callable[[dict], bool], timeout_s: float = 20.0) -> dict:
        return wait_until(
            lambda: next((m for m in self.payloads() if predicate(m)), None), timeout_s
        )

    def close(self) -> None:
        self.client.disconnect()  # first: it wakes paho's loop thread, so loop_stop is quick
        self.client.loop_stop()


def make_agent(
    broker: ShippedBroker | Topology,
    agent_id: str,
    *,
    region: str | None = "r1",
    keys: Keys | None = None,
    state_dir: Path | None = None,
    probe_timeout_s: float = 0.3,
    once: bool = False,
    brokers: str | None = None,
    conn: ConnectionSettings | None = None,
    **overrides: Any,
) -> Agent:
    """An agent with the observe backend, jitter 0, start-up delay 0, quick reconnects,
    logged in as its own identity. `brokers`: another broker list for the same identity
    (a cluster's nodes, a dead address first); `conn`: settings of its own (an edge's)."""
    conn = conn or broker.settings(agent_id)
    if brokers is not None:
        conn.brokers = parse_brokers(brokers)
    conn.connect_timeout_s = 3.0
    options: dict[str, Any] = dict(
        agent_id=agent_id,
        region=region,
        trust=keys.trust if keys else signing.TrustStore(),
        probe_settings=ProbeSettings(timeout_s=probe_timeout_s, samples=2),
        startup_delay_s=0.0,
        resync_jitter_s=0.0,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        retry_min_s=16.0,
    )
    options.update(overrides)
    return Agent(
        AgentSettings(**options),
        conn,
        backend=make_backend("observe"),
        state=StateDir(state_dir) if state_dir else None,
        once=once,
    )


@contextlib.contextmanager
def hosted(*agents: Agent, workers: int = 2) -> Iterator[Fleet]:
    fleet = Fleet(workers=workers)
    for a in agents:
        fleet.add(a)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.stop(timeout_s=3.0)
