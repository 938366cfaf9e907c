"""The publisher's side of MQTT: connect, read the retained snapshot, publish and wait for
every PUBACK.

MQTT 5 where the broker has it: Mosquitto silently drops a publish its ACL denies under
MQTT 3.1.1 (PUBACK 0), while under MQTT 5 the PUBACK carries reason 135, so the publisher
can say it was refused. A broker that answers MQTT 5 with any refusal but one about the
identity (NATS: unsupported-protocol) gets MQTT 3.1.1. Refusals are judged by reason code
(`clockfleet.protocol.session.refusal`), never by message text.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from clockfleet.protocol.connection import (
    BrokerUnreachable,
    ConnectionSettings,
    connect_blocking,
    new_client,
)
from clockfleet.protocol.session import FINAL_REFUSALS, fence_topic, refusal
from clockfleet.protocol.topics import all_agents_filter, all_servers_filter

log = logging.getLogger("clockfleet.publisher")

# Failures MQTT 3.1.1 cannot mend: a refused identity, an address that does not answer, a
# TLS handshake that fails. Anything else (a refused or unanswered MQTT 5 CONNECT) is worth
# one more try with 3.1.1.
_NOT_ABOUT_THE_VERSION = FINAL_REFUSALS | {"unreachable", "tls"}


@dataclass
class Session:
    client: mqtt.Client
    protocol: int
    client_id: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    retained: dict[str, bytes] = field(default_factory=dict)
    suback: dict[int, list] = field(default_factory=dict)
    unsuback: set[int] = field(default_factory=set)
    acked: dict[int, object] = field(default_factory=dict)  # mid -> reason code
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def version_name(self) -> str:
        return "MQTT 5" if self.protocol == mqtt.MQTTv5 else "MQTT 3.1.1"


class CannotConnect(RuntimeError):
    """The broker cannot be reached, or the connection not set up: one line for the user."""


def open_session(settings: ConnectionSettings, timeout_s: float) -> Session:
    """connect(), with every way it can fail turned into CannotConnect and its message."""
    try:
        return connect(settings, timeout_s)
    except BrokerUnreachable as exc:
        raise CannotConnect(f"cannot connect to the broker: {exc}") from exc
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CannotConnect(f"cannot set up the connection: {exc}") from exc


def connect(settings: ConnectionSettings, timeout_s: float) -> Session:
    """Connect with MQTT 5, falling back to 3.1.1; raise BrokerUnreachable with one line."""
    client_id = f"clockfleet-publisher-{secrets.token_hex(4)}"
    refused_5: BrokerUnreachable | None = None
    for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
        client = new_client(settings, client_id, protocol=protocol)
        session = Session(client, protocol, client_id)
        _install_callbacks(session)
        try:
            # A cluster refusing MQTT 5 refuses it on every node: fall back after the first.
            same = frozenset({"unsupported-protocol"}) if protocol == mqtt.MQTTv5 else frozenset()
            connect_blocking(client, settings, timeout_s=timeout_s, same_everywhere=same)
        except BrokerUnreachable as exc:
            if refused_5 is not None:
                raise refused_5 from None  # MQTT 5's answer is the one that says most
            if not _worth_mqtt_311(exc):
                raise
            refused_5 = exc
            continue
        if refused_5 is not None:
            log.info("broker refused MQTT 5 (%s); using MQTT 3.1.1", refused_5)
        return session
    raise AssertionError("unreachable")


def _worth_mqtt_311(exc: BrokerUnreachable) -> bool:
    return any(r not in _NOT_ABOUT_THE_VERSION for r in exc.reasons)


def _install_callbacks(s: Session) -> None:
    def on_message(client, userdata, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:
            return  # a live update from another publisher, not the retained state
        with s.lock:
            s.retained[msg.topic] = msg.payload

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        with s.cond:
            s.suback[mid] = list(reason_codes)
            s.cond.notify_all()

    def on_unsubscribe(client, userdata, mid, reason_codes, properties) -> None:
        with s.cond:
            s.unsuback.add(mid)
            s.cond.notify_all()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        with s.cond:
            s.acked[mid] = reason_code
            s.cond.notify_all()

    s.client.on_message = on_message
    s.client.on_subscribe = on_subscribe
    s.client.on_unsubscribe = on_unsubscribe
    s.client.on_publish = on_publish


def _wait(s: Session, predicate: Callable[[], bool], timeout_s: float) -> bool:
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


def subscribe_checked(s: Session, filters: list[str], timeout_s: float, why: str) -> None:
    """SUBSCRIBE at QoS 0 and wait for the SUBACK; a refused filter is a BrokerError that
    names it (never an empty result that looks like an empty fleet)."""
    rc, mid = s.client.subscribe([(f, 0) for f in filters])
    if rc != mqtt.MQTT_ERR_SUCCESS:
        raise BrokerError(f"cannot subscribe: {mqtt.error_string(rc)}")
    if not _wait(s, lambda: mid in s.suback, timeout_s):
        raise BrokerError(f"no SUBACK within {timeout_s:g} s")
    refused = [
        f"{f} ({why_not})"
        for f, c in zip(filters, s.suback[mid], strict=False)
        if (why_not := refusal(c)) is not None
    ]
    if refused:
        raise BrokerError(
            f"the broker refused to let this identity read {', '.join(refused)}: {why}"
        )


def fence(s: Session, prefix: str, timeout_s: float) -> None:
    """Wait for the end of the retained snapshot of every earlier SUBSCRIBE: the UNSUBACK of
    the session fence (`session.fence_topic`), which needs no ACL grant and publishes
    nothing. Without it a snapshot may be partial: better to stop than act on it."""
    rc, mid = s.client.unsubscribe(fence_topic(prefix, s.client_id))
    if rc != mqtt.MQTT_ERR_SUCCESS:
        raise BrokerError(f"cannot unsubscribe: {mqtt.error_string(rc)}")
    if not _wait(s, lambda: mid in s.unsuback, timeout_s):
        raise BrokerError(f"no UNSUBACK within {timeout_s:g} s: the retained state is unknown")


def read_retained(s: Session, prefix: str, timeout_s: float) -> dict[str, bytes]:
    """Every retained region list and profile on the broker, topic -> payload.

    Subscribes at QoS 0: Mosquitto delivers at most max_inflight + max_queued (1020 by
    default) retained messages to a QoS 1 wildcard subscriber and drops the rest. The
    snapshot is complete at the session fence: the broker answers a client's packets in
    order, after the retained messages of its earlier SUBSCRIBE.
    """
    filters = [all_servers_filter(prefix), all_agents_filter(prefix, "profile")]
    subscribe_checked(s, filters, timeout_s, "cannot compare the file with what agents receive")
    # Without the fence the snapshot may be partial, and a partial one would republish
    # unchanged entries with new versions.
    fence(s, prefix, timeout_s)
    s.client.unsubscribe(filters)
    with s.lock:
        return dict(s.retained)


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
        elif refusal(code) is not None:
            # paho's text for the operator ("Not authorized"); the decision was the code's.
            outcomes.append(Outcome(topic, False, f"refused by the broker: {code}"))
        else:
            outcomes.append(Outcome(topic, True))
    return outcomes


def close(s: Session) -> None:
    with contextlib.suppress(Exception):
        s.client.disconnect()
    with contextlib.suppress(Exception):
        s.client.loop_stop()
