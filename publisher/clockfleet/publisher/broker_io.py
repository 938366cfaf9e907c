"""The publisher's side of MQTT: read the retained state, publish and wait for every PUBACK.

MQTT 5 where the broker has it: Mosquitto silently drops a publish its ACL denies under
MQTT 3.1.1 (PUBACK 0), while under MQTT 5 the PUBACK carries reason 135, so the publisher
can say it was refused. Brokers that refuse MQTT 5 (NATS) get MQTT 3.1.1.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from clockfleet.protocol.connection import (
    BrokerUnreachable,
    ConnectionSettings,
    connect_blocking,
    new_client,
)
from clockfleet.protocol.topics import all_agents_filter, all_servers_filter

log = logging.getLogger("clockfleet.publisher")

# Failures after which MQTT 3.1.1 will not do better: the network or the identity is wrong.
_FINAL = ("Errno", "SSL", "certificate", "ot authori", "Bad user name", "Banned")


@dataclass
class Session:
    client: mqtt.Client
    protocol: int
    client_id: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    retained: dict[str, bytes] = field(default_factory=dict)
    last_retained_at: float = 0.0
    sentinel: str = ""
    sentinel_seen: threading.Event = field(default_factory=threading.Event)
    suback: dict[int, list] = field(default_factory=dict)
    acked: dict[int, object] = field(default_factory=dict)  # mid -> reason code
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def version_name(self) -> str:
        return "MQTT 5" if self.protocol == mqtt.MQTTv5 else "MQTT 3.1.1"


def connect(settings: ConnectionSettings, timeout_s: float) -> Session:
    """Connect with MQTT 5, falling back to 3.1.1; raise BrokerUnreachable with one line."""
    client_id = f"clockfleet-publisher-{secrets.token_hex(4)}"
    first_error = ""
    for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
        client = new_client(settings, client_id, protocol=protocol)
        session = Session(client, protocol, client_id)
        _install_callbacks(session)
        try:
            connect_blocking(client, settings, timeout_s=timeout_s)
            if first_error:
                log.info("broker refused MQTT 5 (%s); using MQTT 3.1.1", first_error)
            return session
        except BrokerUnreachable as exc:
            if protocol == mqtt.MQTTv311 or any(word in str(exc) for word in _FINAL):
                raise BrokerUnreachable(first_error or str(exc)) from None
            first_error = str(exc)
    raise AssertionError("unreachable")


def _install_callbacks(s: Session) -> None:
    def on_message(client, userdata, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == s.sentinel:
            s.sentinel_seen.set()
            return
        if not msg.retain:
            return  # a live update from another publisher, not the retained state
        with s.lock:
            s.retained[msg.topic] = msg.payload
            s.last_retained_at = time.monotonic()

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        with s.cond:
            s.suback[mid] = list(reason_codes)
            s.cond.notify_all()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        with s.cond:
            s.acked[mid] = reason_code
            s.cond.notify_all()

    s.client.on_message = on_message
    s.client.on_subscribe = on_subscribe
    s.client.on_publish = on_publish


def _wait(s: Session, predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    with s.cond:
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            s.cond.wait(min(left, 0.5))
    return True


class BrokerError(RuntimeError):
    """The broker answered, but not as needed (a refused subscription, missing PUBACKs)."""


def read_retained(
    s: Session, prefix: str, timeout_s: float, quiet_s: float = 1.0
) -> dict[str, bytes]:
    """Every retained region list and profile on the broker, topic -> payload.

    Subscribes at QoS 0: Mosquitto delivers at most max_inflight + max_queued (1020 by
    default) retained messages to a QoS 1 wildcard subscriber and drops the rest. The end of
    retained delivery is marked by a message the publisher sends to itself after the SUBACK
    (the broker delivers a client's messages in order); should that sentinel not come back
    (an ACL without the publisher's own topic), a quiet period after the last retained
    message ends the wait instead.
    """
    s.sentinel = f"{prefix}/publisher/{s.client_id}/sync"
    filters = [all_servers_filter(prefix), all_agents_filter(prefix, "profile")]
    rc, mid = s.client.subscribe([(s.sentinel, 0), *[(f, 0) for f in filters]])
    if rc != mqtt.MQTT_ERR_SUCCESS:
        raise BrokerError(f"cannot subscribe: {mqtt.error_string(rc)}")
    if not _wait(s, lambda: mid in s.suback, timeout_s):
        raise BrokerError(f"no SUBACK within {timeout_s:g} s")
    codes = s.suback[mid]
    refused = [f for f, c in zip(filters, codes[1:], strict=False) if _failed(c)]
    if refused:
        raise BrokerError(
            f"the broker refused to let this identity read {', '.join(refused)}: "
            f"cannot compare the file with what agents receive"
        )
    subscribed_at = time.monotonic()
    s.client.publish(s.sentinel, b"", qos=0)
    deadline = subscribed_at + timeout_s
    while not s.sentinel_seen.wait(0.05):
        now = time.monotonic()
        with s.lock:
            last = max(s.last_retained_at, subscribed_at)
        if now - last >= quiet_s:
            log.debug("no sentinel; ended the retained read after %.1f s without one", quiet_s)
            break
        if now >= deadline:
            log.warning("retained delivery unsettled after %g s; using what arrived", timeout_s)
            break
    s.client.unsubscribe([s.sentinel, *filters])
    with s.lock:
        return dict(s.retained)


def _failed(code: object) -> bool:
    if isinstance(code, int):
        return code >= 0x80
    return bool(getattr(code, "is_failure", False))


@dataclass
class Outcome:
    topic: str
    ok: bool
    reason: str = ""


def publish_retained(
    s: Session, messages: list[tuple[str, bytes]], timeout_s: float
) -> list[Outcome]:
    """Publish each (topic, payload) retained at QoS 1 and wait for every PUBACK.

    An empty payload withdraws the topic's retained message.
    """
    mids: dict[int, str] = {}
    outcomes: list[Outcome] = []
    for topic, payload in messages:
        info = s.client.publish(topic, payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            outcomes.append(Outcome(topic, False, mqtt.error_string(info.rc)))
            continue
        mids[info.mid] = topic
    _wait(s, lambda: all(m in s.acked for m in mids), timeout_s)
    for mid, topic in mids.items():
        code = s.acked.get(mid)
        if code is None:
            outcomes.append(Outcome(topic, False, f"no PUBACK within {timeout_s:g} s"))
        elif _failed(code):
            outcomes.append(Outcome(topic, False, f"refused by the broker: {code}"))
        else:
            outcomes.append(Outcome(topic, True))
    return outcomes


def close(s: Session) -> None:
    with contextlib.suppress(Exception):
        s.client.disconnect()
    with contextlib.suppress(Exception):
        s.client.loop_stop()
