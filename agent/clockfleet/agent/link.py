"""An agent's connection to the broker: connect, rotate, back off, subscribe, announce.

One `BrokerLink` per agent, driven by its host's loop (`clockfleet.agent.fleet.Fleet`); it
never runs paho's loop itself. Its life is an explicit state:

    IDLE ──connect()──> CONNECTING ──socket up──> AWAITING_CONNACK ──CONNACK ok──┐
      ^   (paho's connect() on a worker: name lookup, TCP, TLS)                  │
      │                                                                          v
      └── lost / refused / no CONNACK: backoff with jitter ── LEARNING ──> ONLINE
                                                          (own retained status read)
    any state ──stop()──> STOPPING ──socket closed──> CLOSED

- Rotation: the broker list (a cluster's nodes) in a random order, one node per attempt.
- Backoff: `clockfleet.protocol.session.backoff_delay`, full jitter (paho's has none).
- TLS: a certificate refused only for its dates, before the clock is known good, is verified
  without them until it is (chrony's nocerttimecheck; docs/far-off-clocks.md).
- Subscriptions: every SUBACK's codes are checked; a refused or unanswered SUBSCRIBE (a NATS
  node that just lost a peer) is sent again.
- Snapshots: `fence()` calls back once the retained messages of the subscriptions sent
  before it are in (`clockfleet.protocol.session`).
- Status (the service, not `--once`): each connection takes session = previous + 1; the
  will and `online` carry it. With no remembered session (a lost state dir) the link first
  reads its own retained status (LEARNING) so the counter never goes backwards.
- Reports: QoS 1 retained; made while offline they wait in a small backlog.

(A little over 400 lines, most of it the paho callbacks of the states above: one connection's
life reads best in one place.)
"""

from __future__ import annotations

import collections
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import paho.mqtt.client as mqtt

from clockfleet.protocol import codec, topics
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.connection import (
    BrokerAddress,
    ConnectionSettings,
    cert_time_checked,
    is_cert_time_error,
    new_client,
    rotation,
    set_cert_time_check,
    tls_context,
)
from clockfleet.protocol.messages import Status
from clockfleet.protocol.session import backoff_delay, fence_topic, refusal

log = logging.getLogger("clockfleet.agent")

REPORT_BACKLOG = 16  # reports kept while the broker is away; the oldest go first
# A report not acknowledged by then on a live connection: the broker took it but cannot store
# it (a NATS node whose JetStream leader died keeps the connection and never answers). paho
# resends in-flight QoS 1 messages only on a new connection, so make one.
REPORT_ACK_TIMEOUT_S = 10.0
# After a disconnect of our own (the session counter learnt), wait this long before
# connecting again (see _on_disconnect).
QUIET_RECONNECT_S = 0.2
# A report acknowledged this late was held through the broker's trouble, and may not have been
# stored: a NATS node whose JetStream store timed out acknowledges the QoS 1 PUBLISH after 4 s
# without keeping it (measured, `python -m bench scaleout`: 38 of 1000 reports of a list
# change, each PUBACKed after 4.001 s, were in no node's retained store, so the collector never
# saw them). Such a report is sent again a while later, if no newer one went out meanwhile,
# and again while its PUBACKs stay late (a NATS leader election takes 4-9 s), at most
# MAX_RESENDS times; readers take a duplicate as the same report.
SLOW_ACK_S = 2.0
RESEND_AFTER_S = 5.0
MAX_RESENDS = 3


class LinkState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    AWAITING_CONNACK = "awaiting-connack"
    LEARNING = "learning-session"
    ONLINE = "online"
    STOPPING = "stopping"


@dataclass
class LinkEvents:
    """What the link tells its agent (all on the loop thread)."""

    online: Callable[[], None]  # connected, subscribed, status announced
    message: Callable[[str, bytes], None]
    session: Callable[[int], None]  # the session counter moved: remember it
    report_acked: Callable[[], None]
    unreachable: Callable[[str], None]  # --once: every broker tried and failed


class BrokerLink:
    def __init__(
        self,
        agent_id: str,
        conn: ConnectionSettings,
        events: LinkEvents,
        *,
        announce: bool,
        status_payload: Callable[[str, int], bytes],
        clock_behind: Callable[[], Optional[str]],
        counters: collections.Counter[str],
        rng: random.Random,
        reconnect_min_s: float,
        reconnect_max_s: float,
        keepalive_s: int,
        client_id: str,
        clean_session: bool,
    ) -> None:
        self.id = agent_id
        self.conn = conn
        self.host: Any = None  # the loop that drives us: attach()
        self.events = events
        self.session = 0
        self.announce = announce  # the service announces status; --once does not
        self._status_payload = status_payload
        self._clock_behind = clock_behind
        self.counters = counters
        self.rng = rng
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._keepalive = keepalive_s
        self.state = LinkState.IDLE
        self._brokers = rotation(conn.brokers)
        self._next_broker = 0
        self._attempt = 0
        self._retry_timer: Any = None
        self._connack_timer: Any = None
        self._refused: Optional[str] = None  # why the last attempt failed, for the log
        self._pending: dict[int, list[str]] = {}  # SUBSCRIBE mid -> topics, until SUBACK
        self._fences: dict[int, Callable[[], None]] = {}  # UNSUBSCRIBE mid -> callback
        self._wanted: list[str] = []  # topics to hold on every connection
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=REPORT_BACKLOG)
        # in flight: mid -> (sent at, payload, how many times it was sent before)
        self._report_mids: dict[int, tuple[float, bytes, int]] = {}
        self._latest_report: Optional[bytes] = None
        self._learning_seen: Optional[int] = None
        self._learn = False
        self._t_status = topics.status_topic(conn.prefix, agent_id)
        self._t_report = topics.report_topic(conn.prefix, agent_id)
        self.client_id = client_id
        self._t_fence = fence_topic(conn.prefix, client_id)
        self.tls = tls_context(conn) if any(b.tls for b in conn.brokers) else None
        self.client = new_client(conn, client_id, clean_session=clean_session, ssl_context=self.tls)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.client.on_publish = self._on_publish

    def attach(self, host: Any) -> None:
        """Be driven by `host` (a Fleet: call_later, run_blocking, watch)."""
        self.host = host
        host.watch(self.client)

    # --- what the agent calls ---------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state in (LinkState.LEARNING, LinkState.ONLINE)

    @property
    def closed(self) -> bool:
        return self.client.socket() is None and self.state != LinkState.CONNECTING

    def start(self, session: int) -> None:
        """Connect; `session` is the last session announced (0: none remembered)."""
        self.session = session
        # With no remembered session, learn it from our own retained status first.
        self._learn = self.announce and session == 0
        self._connect()

    def stop(self) -> None:
        """Announce `offline` (service) and disconnect; no reconnect follows."""
        was = self.state
        self.state = LinkState.STOPPING
        for t in (self._retry_timer, self._connack_timer):
            if t is not None:
                t.cancel()
        if was in (LinkState.LEARNING, LinkState.ONLINE):
            if self.announce:
                self._publish_status("offline")
            self.client.disconnect()
        elif was == LinkState.AWAITING_CONNACK:
            self.client.disconnect()
        # CONNECTING: _connect_returned closes the socket when the worker is done

    def hold(self, wanted: list[str]) -> None:
        """Keep exactly these topics subscribed, on this connection and every later one."""
        dropped = [t for t in self._wanted if t not in wanted]
        added = [t for t in wanted if t not in self._wanted]
        self._wanted = list(wanted)
        if self.connected:
            if dropped:
                self.client.unsubscribe(dropped)
            if added:
                self._subscribe(added)

    def fence(self, then: Callable[[], None]) -> None:
        """Call `then` once the retained messages of every subscription so far are in."""
        rc, mid = self.client.unsubscribe(self._t_fence)
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._fences[mid] = then

    def publish_report(self, payload: bytes, resend: int = 0) -> bool:
        """Send a report (QoS 1, retained); False when it waits in the backlog. `resend`:
        how many times this report was sent before (see SLOW_ACK_S)."""
        if not resend:
            self._latest_report = payload
        if not self.connected:
            self._backlog.append(payload)
            return False
        info = self.client.publish(self._t_report, payload, qos=1, retain=True)
        self._report_mids[info.mid] = (time.monotonic(), payload, resend)
        mid = info.mid
        self.host.call_later(REPORT_ACK_TIMEOUT_S, lambda: self._ack_overdue(mid))
        return True

    def _ack_overdue(self, mid: int) -> None:
        if mid not in self._report_mids or self.state != LinkState.ONLINE:
            return
        self.counters["report-ack-timeouts"] += 1
        log.warning(
            "%s: report not acknowledged within %g s; reconnecting so it is sent again",
            self.id,
            REPORT_ACK_TIMEOUT_S,
        )
        self.client.disconnect()

    @property
    def reports_in_flight(self) -> int:
        return len(self._report_mids)

    def clock_known_good(self) -> None:
        """The host's clock is right: check certificates' dates again from now on."""
        if self.tls is not None and not cert_time_checked(self.tls):
            set_cert_time_check(self.tls, True)
            log.info("%s: clock synced: broker certificates' dates checked again", self.id)

    # --- connecting -------------------------------------------------------------------

    def _connect(self) -> None:
        self._retry_timer = None
        if self.state != LinkState.IDLE:
            return
        addr = self._brokers[self._next_broker % len(self._brokers)]
        self._next_broker += 1
        if self.announce:
            # The will carries the session this connection will announce as online.
            payload = self._status_payload("offline", self.session + 1)
            self.client.will_set(self._t_status, payload, 1, True)
        # Name lookup, TCP connect and TLS handshake block (paho bounds the last two by its
        # connect timeout, nothing bounds the first): on a worker, so a slow broker name
        # never stalls the loop that other agents share.
        self.state = LinkState.CONNECTING
        keepalive = self._keepalive
        self.host.run_blocking(
            lambda: self.client.connect(addr.host, addr.port, keepalive=keepalive),
            lambda _result, exc: self._connect_returned(addr, exc),
        )

    def _connect_returned(self, addr: BrokerAddress, exc: Optional[BaseException]) -> None:
        if self.state == LinkState.STOPPING:
            if exc is None:
                self.client.disconnect()
            return
        if exc is not None:
            self.state = LinkState.IDLE
            if self.tls is not None and is_cert_time_error(exc) and self._waive_cert_time(exc):
                self._retry_timer = self.host.call_later(0.0, self._connect)
                return
            self._failed(f"{addr}: {exc}")
            return
        self.state = LinkState.AWAITING_CONNACK
        timeout = self.conn.connect_timeout_s
        self._connack_timer = self.host.call_later(timeout, lambda: self._no_connack(addr))

    def _waive_cert_time(self, exc: BaseException) -> bool:
        """A certificate "not yet valid" or "expired": waive its dates only on evidence the
        host can trust that its own clock is behind (clock_evidence.py); never for a clock
        that reads right, which would hand its password to whoever holds an expired
        certificate of the fleet's CA. True when newly waived."""
        assert self.tls is not None
        if not cert_time_checked(self.tls):
            return False
        why = getattr(exc, "verify_message", exc)
        evidence = self._clock_behind()
        if evidence is None:
            self.counters["tls-cert-dates-refused"] += 1
            log.warning(
                "%s: broker certificate refused for its validity dates (%s), and nothing shows "
                "this host's clock is wrong: not connecting to it",
                self.id,
                why,
            )
            return False
        set_cert_time_check(self.tls, False)
        self.counters["tls-time-check-waived"] += 1
        log.warning(
            "%s: broker certificate refused at this host's clock (%s), which is provably "
            "behind (%s): verifying the chain without its validity dates until the first good "
            "sync",
            self.id,
            why,
            evidence,
        )
        return True

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
        self._attempt += 1
        self.counters["connect-failures"] += 1
        if not self.announce:  # --once: each broker once, then give up
            if self._attempt >= len(self._brokers):
                self.events.unreachable(why)
            else:
                self._retry_timer = self.host.call_later(0.0, self._connect)
            return
        low, high = self._reconnect
        # The backoff grows per round of the node list, not per node: when one node of a
        # cluster dies, the next node is tried soon, not after a doubled delay.
        rounds = (self._attempt - 1) // len(self._brokers)
        delay = backoff_delay(rounds, low, high, self.rng)
        log.warning("%s: broker unreachable (%s); retrying in %.1f s", self.id, why, delay)
        self._retry_timer = self.host.call_later(delay, self._connect)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connack_timer is not None:
            self._connack_timer.cancel()
            self._connack_timer = None
        why = refusal(reason_code)
        if why is not None:
            # paho closes the socket and calls on_disconnect, which schedules the retry
            self.counters[f"refused-{why}"] += 1
            self._refused = f"broker refused the connection: {why} ({reason_code})"
            log.error("%s: %s", self.id, self._refused)
            return
        self._attempt = 0
        if self.announce:
            self.session += 1
            self.events.session(self.session)
        log.info(
            "%s: connected to %s:%s%s",
            self.id,
            client.host,
            client.port,
            f" (session {self.session})" if self.announce else "",
        )
        self._pending.clear()
        self._fences.clear()
        if self._wanted:
            self._subscribe(list(self._wanted))
        if self._learn:
            self.state = LinkState.LEARNING
            self._learning_seen = None
            self._subscribe([self._t_status])
            self.fence(self._learned)
            return
        self._go_online()

    def _go_online(self) -> None:
        self.state = LinkState.ONLINE
        if self.announce:
            self._publish_status("online")
        while self._backlog:
            self.publish_report(self._backlog.popleft())
        self.events.online()

    def _learned(self) -> None:
        """Our own retained status (if any) is in: go on from its session, never below."""
        self._learn = False
        self.client.unsubscribe(self._t_status)
        seen = self._learning_seen
        if seen is None or seen < self.session:
            self._go_online()
            return
        # This connection's will already carries a session that is too low: reconnect so
        # that will and online both carry seen + 1.
        log.info("%s: session counter recovered from the broker: %d", self.id, seen)
        self.session = seen
        self.events.session(seen)
        self._refused = "quiet"
        self.client.disconnect()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.state
        if was == LinkState.CONNECTING:
            return  # the late goodbye of an abandoned socket; a new attempt is under way
        self._pending.clear()
        self._fences.clear()
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
            log.warning("%s: broker lost (%s); reconnecting", self.id, reason_code)
            self._attempt = 0
        if self._retry_timer is None:
            self._failed(why or f"disconnected: {reason_code}")

    # --- subscriptions ----------------------------------------------------------------

    def _subscribe(self, wanted: list[str]) -> None:
        rc, mid = self.client.subscribe([(t, 1) for t in wanted])
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._pending[mid] = wanted
            # A NATS node that just lost a peer can leave a SUBSCRIBE unanswered: ask again.
            self.host.call_later(self.conn.connect_timeout_s, lambda: self._no_suback(mid))

    def _no_suback(self, mid: int) -> None:
        wanted = self._pending.pop(mid, None)
        if wanted is None or not self.connected:
            return
        self.counters["subscribe-failures"] += 1
        log.warning("%s: no SUBACK for %s; subscribing again", self.id, ", ".join(wanted))
        self._subscribe(wanted)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        wanted = self._pending.pop(mid, None)
        why = refusal(reason_codes)
        if why is not None and wanted is not None:
            # NATS can refuse a SUBSCRIBE for a few seconds after a node dies: retry.
            self.counters["subscribe-failures"] += 1
            log.warning("%s: subscribe refused (%s); retrying", self.id, why)
            self.host.call_later(
                backoff_delay(1, 1.0, 4.0, self.rng),
                lambda: self.connected and self._subscribe(wanted),
            )

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        then = self._fences.pop(mid, None)
        if then is not None:
            then()

    # --- messages ---------------------------------------------------------------------

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        # Whatever a payload does to a handler, paho must go on to acknowledge it (QoS 1):
        # an exception escaping here would leave it unacknowledged and redelivered forever.
        try:
            if msg.topic == self._t_status:
                self._own_status(msg.payload)
            else:
                self.events.message(msg.topic, msg.payload)
        except Exception:
            self.counters["handler-errors"] += 1
            log.exception("%s: handling a message on %r failed; ignored", self.id, msg.topic)

    def _own_status(self, payload: bytes) -> None:
        if not payload or self.state != LinkState.LEARNING:
            return
        try:
            status, _ = codec.decode(Status, payload, topic_id=self.id)
        except Rejected as r:
            self.counters[r.reason] += 1
            log.warning("%s: rejected own retained status: %s: %s", self.id, r.reason, r.detail)
            return
        self._learning_seen = max(self._learning_seen or 0, status.session)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        sent = self._report_mids.pop(mid, None)
        if sent is None:
            return
        self.events.report_acked()
        sent_at, payload, resent = sent
        if resent < MAX_RESENDS and time.monotonic() - sent_at >= SLOW_ACK_S:
            self.counters["report-slow-acks"] += 1
            self.host.call_later(RESEND_AFTER_S, lambda: self._resend(payload, resent + 1))

    def _resend(self, payload: bytes, times: int) -> None:
        if payload is not self._latest_report or self.state == LinkState.STOPPING:
            return  # a newer report went out (or we are leaving): that one stands
        log.info("%s: sending the last report again (its PUBACK came late)", self.id)
        self.publish_report(payload, resend=times)

    def _publish_status(self, state: str) -> None:
        self.client.publish(self._t_status, self._status_payload(state, self.session), 1, True)
