"""The publisher's side of MQTT: one session per command (`PublisherSession`): connect, read
the retained snapshot, publish and wait for every PUBACK.

MQTT 5 where the broker has it: Mosquitto silently drops a publish its ACL denies under
MQTT 3.1.1 (PUBACK 0), while under MQTT 5 the PUBACK carries reason 135, so the publisher
can say it was refused. A broker that answers MQTT 5 with any refusal but one about the
identity (NATS: unsupported-protocol) gets MQTT 3.1.1. Refusals are judged by reason code
(`clockfleet.protocol.session.refusal`), never by message text.

Connecting, the snapshot fence and the connection's state names are the shared package's
(`connection.connect_blocking`, `session.Fences`, `session.LinkState`). A session lives as
long as its command: CONNECTING, ONLINE (IDLE while paho reconnects after a loss),
STOPPING, CLOSED. The shipped broker binds client ids to identities, so a command never
opens a second one (it would close the first).
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
from paho.mqtt.reasoncodes import ReasonCode

from clockfleet.protocol.connection import (
    BrokerUnreachable,
    ConnectionSettings,
    connect_blocking,
    new_client,
)
from clockfleet.protocol.session import FINAL_REFUSALS, Fences, LinkState, refusal
from clockfleet.protocol.topics import all_agents_filter, all_servers_filter

log = logging.getLogger("clockfleet.publisher")

# Failures MQTT 3.1.1 cannot mend: a refused identity, an address that does not answer, a
# TLS handshake that fails. Anything else (a refused or unanswered MQTT 5 CONNECT) is worth
# one more try with 3.1.1.
_NOT_ABOUT_THE_VERSION = FINAL_REFUSALS | {"unreachable", "tls"}


@dataclass
class PublisherSession:
    """One command's MQTT session, and what the broker has answered on it so far (written
    on paho's thread by the `_on_*` callbacks, read under `cond`)."""

    client: mqtt.Client
    protocol: int
    client_id: str
    fences: Fences
    state: LinkState = LinkState.CONNECTING
    lock: threading.Lock = field(default_factory=threading.Lock)
    retained: dict[str, bytes] = field(default_factory=dict)
    suback: dict[int, list[ReasonCode]] = field(default_factory=dict)
    acked: dict[int, ReasonCode] = field(default_factory=dict)  # mid -> PUBACK reason code
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def version_name(self) -> str:
        return "MQTT 5" if self.protocol == mqtt.MQTTv5 else "MQTT 3.1.1"

    def listen(self) -> None:
        """Hand paho the callbacks below (before connecting): the connection's state, the
        retained messages, and the broker's answers to SUBSCRIBE, UNSUBSCRIBE and PUBLISH."""
        c = self.client
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe, c.on_unsubscribe = self._on_subscribe, self._on_unsubscribe
        c.on_publish = self._on_publish

    # paho's callbacks (API version 2). The arguments they do not read are typed `object`.

    def _on_connect(
        self, client: object, userdata: object, flags: object, code: ReasonCode, props: object
    ) -> None:
        if not code.is_failure:
            self.state = LinkState.ONLINE

    def _on_disconnect(
        self, client: object, userdata: object, flags: object, code: object, props: object
    ) -> None:
        if self.state == LinkState.ONLINE:
            self.state = LinkState.IDLE  # paho's loop connects again

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:
            return  # a live update from another publisher, not the retained state
        with self.lock:
            self.retained[msg.topic] = bytes(msg.payload)

    def _on_subscribe(
        self, client: object, userdata: object, mid: int, codes: list[ReasonCode], props: object
    ) -> None:
        with self.cond:
            self.suback[mid] = list(codes)
            self.cond.notify_all()

    def _on_unsubscribe(
        self, client: object, userdata: object, mid: int, codes: object, props: object
    ) -> None:
        with self.cond:  # fence() arms under it: the answer never comes before its fence
            self.fences.answered(mid)

    def _on_publish(
        self, client: object, userdata: object, mid: int, code: ReasonCode, props: object
    ) -> None:
        with self.cond:
            self.acked[mid] = code
            self.cond.notify_all()


class CannotConnect(RuntimeError):
    """The broker cannot be reached, or the connection not set up: one line for the user."""


def open_session(settings: ConnectionSettings, timeout_s: float) -> PublisherSession:
    """connect(), with every way it can fail turned into CannotConnect and its message."""
    try:
        return connect(settings, timeout_s)
    except BrokerUnreachable as exc:
        raise CannotConnect(f"cannot connect to the broker: {exc}") from exc
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise CannotConnect(f"cannot set up the connection: {exc}") from exc


def connect(settings: ConnectionSettings, timeout_s: float) -> PublisherSession:
    """Connect with MQTT 5, falling back to 3.1.1; raise BrokerUnreachable with one line."""
    client_id = f"clockfleet-publisher-{secrets.token_hex(4)}"
    refused_5: BrokerUnreachable | None = None
    for protocol in (mqtt.MQTTv5, mqtt.MQTTv311):
        client = new_client(settings, client_id, protocol=protocol)
        session = PublisherSession(client, protocol, client_id, Fences(settings.prefix, client_id))
        session.listen()
        try:
            # A cluster refusing MQTT 5 refuses it on every node: fall back after the first.
            same = frozenset({"unsupported-protocol"}) if protocol == mqtt.MQTTv5 else frozenset()
            connect_blocking(client, settings, timeout_s=timeout_s, same_everywhere=same)
        except BrokerUnreachable as exc:
            session.state = LinkState.CLOSED
            if refused_5 is not None:
                raise refused_5 from None  # MQTT 5's answer is the one that says most
            if not _worth_mqtt_311(exc):
                raise
            refused_5 = exc
            continue
        session.state = LinkState.ONLINE  # connect_blocking returns on a good CONNACK only
        if refused_5 is not None:
            log.info("broker refused MQTT 5 (%s); using MQTT 3.1.1", refused_5)
        return session
    raise AssertionError("unreachable")


def _worth_mqtt_311(exc: BrokerUnreachable) -> bool:
    return any(r not in _NOT_ABOUT_THE_VERSION for r in exc.reasons)


def _wait(s: PublisherSession, predicate: Callable[[], bool], timeout_s: float) -> bool:
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


def subscribe_checked(s: PublisherSession, filters: list[str], timeout_s: float, why: str) -> None:
    """SUBSCRIBE at QoS 0 and wait for the SUBACK; a refused filter is a BrokerError that
    names it (never an empty result that looks like an empty fleet)."""
    rc, mid = s.client.subscribe([(f, 0) for f in filters])
    if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
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


def fence(s: PublisherSession, timeout_s: float) -> None:
    """Wait for the end of the retained snapshot of every earlier SUBSCRIBE: the UNSUBACK of
    the session fence (`session.Fences`), which needs no ACL grant and publishes nothing.
    Without it a snapshot may be partial: better to stop than act on it."""
    answered = threading.Event()
    with s.cond:
        armed = s.fences.arm(s.client, answered.set)
    if armed is None:
        # paho refuses an UNSUBSCRIBE only when the client is not connected.
        raise BrokerError(f"cannot unsubscribe: {mqtt.error_string(mqtt.MQTT_ERR_NO_CONN)}")
    if not answered.wait(timeout_s):
        raise BrokerError(f"no UNSUBACK within {timeout_s:g} s: the retained state is unknown")


def read_retained(s: PublisherSession, prefix: str, timeout_s: float) -> dict[str, bytes]:
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
    fence(s, timeout_s)
    s.client.unsubscribe(filters)
    with s.lock:
        return dict(s.retained)


@dataclass
class PublishResult:
    """What became of one retained publish: acknowledged, or why not."""

    topic: str
    ok: bool
    reason: str = ""


def publish_retained(
    s: PublisherSession, messages: list[tuple[str, bytes]], timeout_s: float
) -> list[PublishResult]:
    """Publish each (topic, payload) retained at QoS 1 and wait for every PUBACK.

    An empty payload withdraws the topic's retained message.
    """
    mids: dict[int, str] = {}
    results: list[PublishResult] = []
    for topic, payload in messages:
        info = s.client.publish(topic, payload, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            results.append(PublishResult(topic, False, mqtt.error_string(info.rc)))
            continue
        mids[info.mid] = topic
    _wait(s, lambda: all(m in s.acked for m in mids), timeout_s)
    for mid, topic in mids.items():
        code = s.acked.get(mid)
        if code is None:
            results.append(PublishResult(topic, False, f"no PUBACK within {timeout_s:g} s"))
        elif refusal(code) is not None:
            # paho's text for the operator ("Not authorized"); the decision was the code's.
            results.append(PublishResult(topic, False, f"refused by the broker: {code}"))
        else:
            results.append(PublishResult(topic, True))
    return results


def close(s: PublisherSession) -> None:
    if s.state == LinkState.CLOSED:
        return
    s.state = LinkState.STOPPING
    with contextlib.suppress(Exception):
        s.client.disconnect()
    with contextlib.suppress(Exception):
        s.client.loop_stop()
    s.state = LinkState.CLOSED
