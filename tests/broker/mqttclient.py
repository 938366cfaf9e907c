"""A small blocking MQTT client for tests: connect as an identity, collect what arrives."""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.protocol.connection import ConnectionSettings

WAIT_S = 10.0  # generous: other engineers' tests share the two cores


class ConnectRefused(ConnectionError):
    pass


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class MqttProbe:
    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    acks: dict[int, object] = field(default_factory=dict)
    subacks: dict[int, list] = field(default_factory=dict)
    # Every disconnect the broker caused: paho reconnects on its own, so is_connected() alone
    # can miss a takeover.
    disconnects: list[object] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, predicate, timeout_s: float = WAIT_S) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def subscribe(self, *filters: str, qos: int = 0) -> list:
        _, mid = self.client.subscribe([(f, qos) for f in filters])
        assert self.wait(lambda: mid in self.subacks), "no SUBACK"
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False):
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        assert self.wait(lambda: info.mid in self.acks), "no PUBACK"
        return self.acks[info.mid]

    def on(self, topic: str) -> list[Received]:
        with self.cond:
            return [m for m in self.messages if m.topic == topic]

    def topics(self) -> set[str]:
        with self.cond:
            return {m.topic for m in self.messages}

    def sync(self, sentinel_topic: str) -> None:
        """Publish to a topic this client reads and wait for it: everything queued for this
        client before now has then arrived (Mosquitto keeps a client's messages in order)."""
        self.publish(sentinel_topic, b"sync")
        assert self.wait(lambda: self.on(sentinel_topic)), "sentinel did not come back"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def connect(
    port: int,
    username: str | None = None,
    password: str | None = None,
    *,
    host: str = "127.0.0.1",
    ca_file: str | None = None,
    tls: bool = False,
    protocol: int = mqtt.MQTTv5,
    client_id: str = "",
    will: tuple[str, bytes] | None = None,
) -> MqttProbe:
    """Connected and looping; `will` = (topic, payload), retained at QoS 1 as agents set it."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    if username is not None:
        client.username_pw_set(username, password)
    if tls or ca_file is not None:
        # Without ca_file: the system's CAs, which do not know the test CA.
        client.tls_set_context(ssl.create_default_context(cafile=ca_file))
    tc = MqttProbe(client)
    result: dict = {}
    done = threading.Event()

    def on_connect(c, ud, flags, rc, props):
        result["rc"] = rc
        done.set()

    def on_message(c, ud, msg):
        with tc.cond:
            tc.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))
            tc.cond.notify_all()

    def on_publish(c, ud, mid, rc, props):
        with tc.cond:
            tc.acks[mid] = rc
            tc.cond.notify_all()

    def on_subscribe(c, ud, mid, rcs, props):
        with tc.cond:
            tc.subacks[mid] = list(rcs)
            tc.cond.notify_all()

    def on_disconnect(c, ud, flags, rc, props):
        with tc.cond:
            tc.disconnects.append(rc)
            tc.cond.notify_all()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_subscribe = on_subscribe
    client.connect(host, port)
    client.loop_start()
    if not done.wait(WAIT_S) or result["rc"].is_failure:
        client.loop_stop()  # paho would keep retrying a refused connect
        client.disconnect()
        raise ConnectRefused(str(result.get("rc", "no CONNACK")))
    return tc


def login_with(settings: ConnectionSettings, **kwargs) -> MqttProbe:
    """Connected as the settings' identity to their first broker (MQTT 3.1.1, as clockfleet's
    programs; TLS when they name a CA), as a devstack broker's settings(ID) give them."""
    b = settings.brokers[0]
    return connect(
        b.port, settings.username, settings.password, host=b.host, ca_file=settings.ca_file,
        protocol=mqtt.MQTTv311, **kwargs,
    )  # fmt: skip
