"""An agent's connection to the broker: connect, rotate, back off, announce, hand on messages.

One `BrokerLink` per agent, driven by its host's loop (`loop_host.AgentHost`); it never runs
paho's loop itself. Its life is an explicit state (`clockfleet.protocol.session.LinkState`):

    IDLE ──connect()──> CONNECTING ──socket up──> AWAITING_CONNACK ──CONNACK ok──┐
      ^   (paho's connect() on a worker: name lookup, TCP, TLS)                  │
      │                                                                          v
      └── lost / refused / no CONNACK: backoff with jitter ── LEARNING ──> ONLINE
                                                          (own retained status read)
    any state ──stop()──> STOPPING ──socket closed──> closed

- Rotation and backoff: `clockfleet.protocol.connection.Rotation` (full jitter, per round of
  a cluster's node list; paho's own backoff has none).
- TLS: a certificate refused only for its dates is verified without them only on evidence
  the host can trust that its clock is behind (cert_dates.py; docs/far-off-clocks.md).
- Subscriptions: subscriptions.py; reports: report_delivery.py; snapshots: `fence()`
  (`clockfleet.protocol.session.Fences`).
- Status (the service, not `--once`): each connection takes session = previous + 1; the
  will and `online` carry it. With no remembered session (a lost state dir) the link first
  reads its own retained status (LEARNING, session_counter.py) so the counter never goes
  backwards. The loop may handle a CONNACK before the worker's connect() returns: either
  order ends in the same state.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from clockfleet.agent.cert_dates import CertDates
from clockfleet.agent.loop_host import AgentHost, Cancellable
from clockfleet.agent.report_delivery import ReportDelivery
from clockfleet.agent.session_counter import SessionCounter
from clockfleet.agent.subscriptions import Subscriptions
from clockfleet.protocol import topics
from clockfleet.protocol.connection import (
    BrokerAddress,
    ConnectionSettings,
    Rotation,
    new_client,
    tls_context,
)
from clockfleet.protocol.session import Fences, LinkState, refusal

log = logging.getLogger("clockfleet.agent")

# After a disconnect of our own (the session counter learnt), wait this long before
# connecting again (see _on_disconnect).
QUIET_RECONNECT_S = 0.2


@dataclass
class LinkEvents:
    """What the link tells its agent, and asks of it (all on the loop thread)."""

    online: Callable[[], None]  # connected, subscribed, status announced
    message: Callable[[str, bytes], None]
    session: Callable[[int], None]  # the session counter moved: remember it
    report_acked: Callable[[], None]
    unreachable: Callable[[str], None]  # --once: every broker tried and failed
    status_payload: Callable[[str, int], bytes]  # (state, session) -> clock.status/1
    clock_behind: Callable[[], Optional[str]]  # evidence the host's clock is behind


@dataclass
class LinkTiming:
    reconnect_min_s: float
    reconnect_max_s: float
    keepalive_s: int
    rng: random.Random = field(default_factory=random.Random)


class BrokerLink:
    def __init__(
        self,
        agent_id: str,
        conn: ConnectionSettings,
        events: LinkEvents,
        timing: LinkTiming,
        counters: collections.Counter[str],
        *,
        announce: bool,
        client_id: str,
        clean_session: bool,
    ) -> None:
        self.id = agent_id
        self.conn = conn
        self.events = events
        self.timing = timing
        self.counters = counters
        self.session = SessionCounter(announce)
        self.host: Optional[AgentHost] = None
        self.state = LinkState.IDLE
        self.rotation = Rotation(conn.brokers)
        self._retry_timer: Optional[Cancellable] = None
        self._connack_timer: Optional[Cancellable] = None
        self._refused: Optional[str] = None  # why the last attempt failed, for the log
        self._answered = False  # this attempt's CONNACK is in (it may beat connect()'s return)
        self._t_status = topics.status_topic(conn.prefix, agent_id)
        self.client_id = client_id
        self.fences = Fences(conn.prefix, client_id)
        tls = tls_context(conn) if any(b.tls for b in conn.brokers) else None
        self.cert_dates = CertDates(agent_id, tls, events.clock_behind, counters)
        self.client = new_client(conn, client_id, clean_session=clean_session, ssl_context=tls)
        self.client.max_queued_messages_set(0)
        self.subscriptions = Subscriptions(
            agent_id,
            self.client,
            counters,
            timing.rng,
            lambda: self.connected,
            conn.connect_timeout_s,
        )
        report_topic = topics.report_topic(conn.prefix, agent_id)

        def send(payload: bytes) -> Optional[int]:
            if not self.connected:
                return None
            return int(self.client.publish(report_topic, payload, qos=1, retain=True).mid)

        self.reports = ReportDelivery(
            agent_id,
            counters,
            send,
            online=lambda: self.state == LinkState.ONLINE,
            reconnect=self._reconnect_now,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_publish = self._on_publish

    def attach(self, host: AgentHost) -> None:
        """Be driven by `host`: its timers, its workers, its selector."""
        self.host = host
        self.subscriptions.attach(host)
        self.reports.attach(host)
        host.watch(self.client)

    # --- what the agent calls ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state in (LinkState.LEARNING, LinkState.ONLINE)

    @property
    def closed(self) -> bool:
        return self.client.socket() is None and self.state != LinkState.CONNECTING

    @property
    def reports_in_flight(self) -> int:
        return self.reports.in_flight

    def start(self, session: int) -> None:
        """Connect; `session` is the last session announced (0: none remembered)."""
        self.session.value = session
        # With no remembered session, learn it from our own retained status first.
        self.session.learn = self.session.announce and session == 0
        self._connect()

    def stop(self) -> None:
        """Announce `offline` (service) and disconnect; no reconnect follows."""
        was = self.state
        self.state = LinkState.STOPPING
        self.reports.stopped = True
        for t in (self._retry_timer, self._connack_timer):
            if t is not None:
                t.cancel()
        if was in (LinkState.LEARNING, LinkState.ONLINE):
            if self.session.announce:
                self._publish_status("offline")
            self.client.disconnect()
        elif was == LinkState.AWAITING_CONNACK:
            self.client.disconnect()
        # CONNECTING: _connect_returned closes the socket when the worker is done

    def hold(self, wanted: list[str]) -> None:
        self.subscriptions.hold(wanted)

    def fence(self, then: Callable[[], None]) -> None:
        """Call `then` once the retained messages of every subscription so far are in."""
        self.fences.arm(self.client, then)

    def publish_report(self, payload: bytes) -> bool:
        """Send a report (QoS 1, retained); False when it waits in the backlog."""
        return self.reports.publish(payload)

    def clock_known_good(self) -> None:
        self.cert_dates.clock_known_good()

    # --- connecting -------------------------------------------------------------------
    # paho's callbacks (API version 2) take the client, its user data (unused here), the
    # packet's fields and its MQTT 5 properties (none under MQTT 3.1.1).

    def _connect(self) -> None:
        self._retry_timer = None
        if self.state != LinkState.IDLE:
            return
        assert self.host is not None, "attach() first"
        addr = self.rotation.next()
        if self.session.announce:
            # The will carries the session this connection will announce as online.
            payload = self.events.status_payload("offline", self.session.value + 1)
            self.client.will_set(self._t_status, payload, 1, True)
        # Name lookup, TCP connect and TLS handshake block (paho bounds the last two by its
        # connect timeout, nothing bounds the first): on a worker, so a slow broker name
        # never stalls the loop that other agents share.
        self.state = LinkState.CONNECTING
        self._answered = False
        keepalive = self.timing.keepalive_s
        self.host.run_blocking(
            lambda: self.client.connect(addr.host, addr.port, keepalive=keepalive),
            lambda _result, exc: self._connect_returned(addr, exc),
        )

    def _connect_returned(self, addr: BrokerAddress, exc: Optional[BaseException]) -> None:
        assert self.host is not None
        if self.state == LinkState.STOPPING:
            if exc is None:
                self.client.disconnect()
            return
        if exc is not None:
            self.state = LinkState.IDLE
            if self.cert_dates.waive_after(exc):
                self._retry_timer = self.host.call_later(0.0, self._connect)
                return
            self._failed(f"{addr}: {exc}")
            return
        if self._answered:  # the CONNACK (or the refusal) already moved the state on
            return
        self.state = LinkState.AWAITING_CONNACK
        timeout = self.conn.connect_timeout_s
        self._connack_timer = self.host.call_later(timeout, lambda: self._no_connack(addr))

    def _no_connack(self, addr: BrokerAddress) -> None:
        self._connack_timer = None
        if self.state != LinkState.AWAITING_CONNACK:
            return
        why = f"{addr}: no CONNACK within {self.conn.connect_timeout_s:g} s"
        self.client.disconnect()
        # paho reports the disconnect once DISCONNECT is written, if ever: retry now; the
        # late on_disconnect then finds the retry armed and leaves it be.
        self.state = LinkState.IDLE
        if self._retry_timer is None:
            self._failed(why)

    def _failed(self, why: str) -> None:
        assert self.host is not None
        self.rotation.failed()
        self.counters["connect-failures"] += 1
        if not self.session.announce:  # --once: each broker once, then give up
            if self.rotation.tried_every_node:
                self.events.unreachable(why)
            else:
                self._retry_timer = self.host.call_later(0.0, self._connect)
            return
        t = self.timing
        delay = self.rotation.delay(t.reconnect_min_s, t.reconnect_max_s, t.rng)
        log.warning("%s: broker unreachable (%s); retrying in %.1f s", self.id, why, delay)
        self._retry_timer = self.host.call_later(delay, self._connect)

    def _on_connect(self, c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if self._connack_timer is not None:
            self._connack_timer.cancel()
            self._connack_timer = None
        if self.state not in (LinkState.CONNECTING, LinkState.AWAITING_CONNACK):
            return  # an attempt given up on (no CONNACK in time, or stopping): it is closing
        self._answered = True
        why = refusal(rc)
        if why is not None:
            # paho closes the socket and calls on_disconnect, which schedules the retry
            self.counters[f"refused-{why}"] += 1
            self._refused = f"broker refused the connection: {why} ({rc})"
            log.error("%s: %s", self.id, self._refused)
            return
        self.rotation.succeeded()
        session = self.session
        if session.announce:
            session.value += 1
            self.events.session(session.value)
        log.info(
            "%s: connected to %s:%s%s",
            self.id,
            c.host,
            c.port,
            f" (session {session.value})" if session.announce else "",
        )
        self.fences.clear()
        self.subscriptions.connected()
        if session.learn:
            self.state = LinkState.LEARNING
            session.seen = None
            self.subscriptions.subscribe([self._t_status])
            self.fence(self._learned)
            return
        self._go_online()

    def _go_online(self) -> None:
        self.state = LinkState.ONLINE
        if self.session.announce:
            self._publish_status("online")
        self.reports.flush()
        self.events.online()

    def _learned(self) -> None:
        """Our own retained status (if any) is in: go on from its session, never below."""
        session = self.session
        session.learn = False
        self.client.unsubscribe(self._t_status)
        if session.seen is None or session.seen < session.value:
            self._go_online()
            return
        # This connection's will already carries a session that is too low: reconnect so
        # that will and online both carry seen + 1.
        log.info("%s: session counter recovered from the broker: %d", self.id, session.seen)
        session.value = session.seen
        self.events.session(session.seen)
        self._refused = "quiet"
        self.client.disconnect()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        assert self.host is not None
        was = self.state
        if was == LinkState.CONNECTING and not self._answered:
            return  # the late goodbye of an abandoned socket; a new attempt is under way
        self.subscriptions.lost()
        self.fences.clear()
        if was == LinkState.STOPPING:
            return
        self.state = LinkState.IDLE
        why, self._refused = self._refused, None
        if why == "quiet":  # a reconnect of our own (session learnt)
            # Not at once: a CONNECT that reaches the broker before it has read our
            # DISCONNECT looks like a second login of this identity, which closes the old
            # connection as taken over and fires its will (an `offline` of the too-low
            # session). No packet acknowledges a DISCONNECT; a moment is enough.
            self._retry_timer = self.host.call_later(QUIET_RECONNECT_S, self._connect)
            return
        if was in (LinkState.LEARNING, LinkState.ONLINE):
            self.counters["broker-lost"] += 1
            log.warning("%s: broker lost (%s); reconnecting", self.id, rc)
            self.rotation.succeeded()
        if self._retry_timer is None:
            self._failed(why or f"disconnected: {rc}")

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        self.subscriptions.suback(mid, rcs)

    def _on_unsubscribe(self, _c: Any, _u: Any, mid: int, _rcs: Any, _p: Any) -> None:
        self.fences.answered(mid)

    # --- messages ---------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Whatever a payload does to a handler, paho must go on to acknowledge it (QoS 1):
        # an exception escaping here would leave it unacknowledged and redelivered forever.
        try:
            payload = bytes(msg.payload)
            if msg.topic == self._t_status:
                if self.state == LinkState.LEARNING:
                    self.session.saw_status(self.id, payload, self.counters)
            else:
                self.events.message(msg.topic, payload)
        except Exception:
            self.counters["handler-errors"] += 1
            log.exception("%s: handling a message on %r failed; ignored", self.id, msg.topic)

    def _on_publish(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        if self.reports.acked(mid):
            self.events.report_acked()

    def _reconnect_now(self) -> None:
        """Drop this connection: the next one carries what is in flight again."""
        self.client.disconnect()

    def _publish_status(self, state: str) -> None:
        payload = self.events.status_payload(state, self.session.value)
        self.client.publish(self._t_status, payload, 1, True)
