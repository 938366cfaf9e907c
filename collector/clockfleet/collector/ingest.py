"""The collector's MQTT side: subscribe to reports, status and region lists; feed FleetState.

Programmatic use (benchmarks drive this in-process)::

    from clockfleet.collector.ingest import Collector
    from clockfleet.protocol.connection import ConnectionSettings, parse_brokers

    c = Collector(ConnectionSettings(parse_brokers("mqtt://127.0.0.1:PORT")),
                  on_report=lambda agent, report, t: ...)   # optional hook
    c.start()            # connects (raises BrokerUnreachable if no broker answers), then
                         # runs the MQTT loop in a daemon thread
    c.state              # FleetState: .agents[agent].report / .status, .regions[region]
    c.retained_loaded    # threading.Event: the broker has sent the whole retained snapshot
    c.link()             # LinkStats: connected, reconnects
    c.stop()

    # /metrics as `clockfleet collector` serves it (cached per agent between scrapes):
    from clockfleet.collector.metrics import MetricsRenderer
    body = MetricsRenderer(c.state, c.link).render()

`on_report(agent, report, t)` is called in the MQTT thread for every accepted report, with the
decoded `Report` and `t = time.monotonic()` taken when the message was handed to us; keep it
cheap. `on_message(result, t)` (optional) sees every message's `fleet_state.Result`.

Why it is written this way:
- Retained state is read at **QoS 0**: Mosquitto hands a new QoS 1 wildcard subscriber at most
  ~1020 retained messages (max_inflight + max_queued) and drops the rest; at QoS 0 it sends all.
- A clean session: the retained messages are the state, there is nothing to resume.
- One paho client over its external-loop API in one thread, over a BufferedLink whose own
  thread drains the socket into memory as fast as the broker sends: Mosquitto drops QoS 0
  messages, too, for a subscriber that has more than max_queued_messages (default 1000)
  packets waiting, and decoding is slower than the retained burst arrives.
- `retained_loaded`: after the SUBACK we UNSUBSCRIBE a topic we never subscribed; Mosquitto
  answers it only after queueing every retained message (it handles a client's packets in
  order). Other brokers may deliver later: `clockfleet status` also waits for a quiet spell.
- Broker loss: reconnect with full-jitter backoff (paho's own has none), rotating through the
  cluster's nodes, and subscribe again on every connect.
- Rejected messages are logged at most once per reason per LOG_EVERY_S seconds (a flood of bad
  messages must not flood the log); the counters count every one.
- No message can stop the loop: an exception other than a rejection while handling one
  message (a decoder bug, a hook's error) is counted in `state.handler_errors`, logged
  (rate-limited, with the topic) and the next message is handled. An exception out of paho's
  own packet handling leaves paho's state unknown: it is counted too, and the connection is
  dropped and made again.
- A flood must not starve the loop: each turn reads for at most SLICE_S before paho gets to
  write and to send its keepalive PINGREQ (otherwise the broker drops us after 1.5 x the
  keepalive and we reload everything, again and again), the link bounds its buffer (see
  link.py), and a per-topic token bucket (`RateLimit`, default a burst of 5 and 1 a second)
  drops the excess of any one topic before decoding, counted as
  `state.dropped["rate-limited"]`. The buckets start full on every connection, so a retained
  snapshot (one message per topic) is never limited.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from clockfleet.collector.fleet_state import FleetState, Outcome, Result
from clockfleet.collector.link import MAX_BUFFER, BufferedLink
from clockfleet.collector.metrics import LinkStats
from clockfleet.collector.text import printable
from clockfleet.protocol.connection import (
    BrokerAddress,
    BrokerUnreachable,
    ConnectionSettings,
    backoff_delay,
    new_client,
    rotation,
)
from clockfleet.protocol.messages import Report
from clockfleet.protocol.topics import all_agents_filter, all_servers_filter

log = logging.getLogger("clockfleet.collector")

LOG_EVERY_S = 10.0
KEEPALIVE_S = 30
RECONNECT_CAP_S = 30.0
# Longest a turn of the loop reads before paho may write and check its keepalive.
SLICE_S = 0.05
REFUSED_DETAIL = {
    "oversized": "a PUBLISH larger than any acceptable message (skipped unread)",
    "malformed-packet": "a PUBLISH whose topic length runs past the packet",
}

ReportHook = Callable[[str, Report, float], None]
MessageHook = Callable[[Result, float], None]


def subscriptions(prefix: str) -> list[tuple[str, int]]:
    return [
        (all_agents_filter(prefix, "report"), 0),
        (all_agents_filter(prefix, "status"), 0),
        (all_servers_filter(prefix), 0),
    ]


class RateLimitedLog:
    """At most one line per key per interval, saying how many were left unsaid."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(
        self, key: str, msg: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += f" (and {skipped} more like it not logged)"
        log.warning(msg, *args, exc_info=exc_info)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per topic: `burst` messages at once, `per_s` a second sustained."""

    burst: int = 5
    per_s: float = 1.0

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.per_s > 0:
            raise ValueError("a rate limit needs burst >= 1 and per_s > 0")


DEFAULT_RATE_LIMIT = RateLimit()


class RateLimiter:
    """Per-topic token buckets, keyed by the raw topic bytes (before any decoding).

    Memory is bounded: past `max_keys` buckets, those that have refilled (and so say nothing
    a fresh one would not) are forgotten, and if that frees too little, all are. Forgetting
    only ever lets messages through: an agent does not lose its reports to a flood of others.
    """

    def __init__(self, limit: RateLimit, max_keys: int = 262_144) -> None:
        self.burst = float(limit.burst)
        self.per_s = limit.per_s
        self.max_keys = max_keys
        self._buckets: dict[bytes, list[float]] = {}  # topic -> [tokens, last time]

    def reset(self) -> None:
        self._buckets = {}

    def allow(self, key: bytes, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.per_s
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _prune(self, now: float) -> None:
        full = self.burst
        per_s = self.per_s
        kept = {k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * per_s < full}
        self._buckets = kept if len(kept) < self.max_keys * 3 // 4 else {}


class Collector:
    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        on_report: ReportHook | None = None,
        on_message: MessageHook | None = None,
        client_id: str | None = None,
        rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
        keepalive_s: int = KEEPALIVE_S,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        self.settings = settings
        self.state = FleetState(settings.prefix)
        self.on_report = on_report
        self.on_message = on_message
        self.client_id = client_id or f"clockfleet-collector-{uuid.uuid4().hex[:12]}"
        self.keepalive_s = keepalive_s
        self.max_buffer = max_buffer
        self._limiter = RateLimiter(rate_limit) if rate_limit is not None else None
        self._errors = RateLimitedLog()
        self._connected = False
        self._connections = 0
        # Set once the broker has sent everything retained for our subscriptions (see
        # _on_subscribe); cleared on every disconnect.
        self.retained_loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rejects = RateLimitedLog()
        self._client: mqtt.Client | None = None
        self._brokers = rotation(settings.brokers)
        self._next_broker = 0
        self.current_broker: BrokerAddress | None = None

    # --- public --------------------------------------------------------------------------

    def link(self) -> LinkStats:
        return LinkStats(self._connected, max(0, self._connections - 1))

    @property
    def connected(self) -> bool:
        return self._connected

    def start(self, timeout_s: float | None = None) -> Collector:
        """Connect to the first broker that answers (or raise BrokerUnreachable), subscribe,
        and keep the MQTT loop running in a daemon thread from then on."""
        timeout = self.settings.connect_timeout_s if timeout_s is None else timeout_s
        errors = []
        for _ in range(len(self._brokers)):
            addr, err = self._connect_one(timeout)
            if err is None:
                break
            errors.append(f"{addr}: {err}")
        else:
            raise BrokerUnreachable("; ".join(errors))
        self._thread = threading.Thread(target=self._run, name="collector-mqtt", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        client = self._client
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.loop_write()
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()
        self._connected = False

    # --- connection ------------------------------------------------------------------------

    def _pick_broker(self) -> BrokerAddress:
        addr = self._brokers[self._next_broker % len(self._brokers)]
        self._next_broker += 1
        return addr

    def _connect_one(self, timeout: float) -> tuple[BrokerAddress, str | None]:
        """Open a connection and serve it until the CONNACK; None as the error when up."""
        addr = self._pick_broker()
        client = new_client(self.settings, self.client_id, clean_session=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.user_data_set({"connack": None})
        self.current_broker = addr
        try:
            client.connect(addr.host, addr.port, keepalive=self.keepalive_s)
        except (OSError, ssl.SSLError) as exc:
            return addr, str(exc)
        if self._limiter is not None:
            self._limiter.reset()  # full buckets: the retained snapshot comes in one burst
        # paho 2.x keeps its socket in `_sock` and calls only recv/send/close/pending on it
        # once connected: hand it the buffered link (see link.py for why).
        # The link's own PUBLISH framing reads the MQTT 3.1.1 layout (no properties).
        fast = self._on_raw_publish if client.protocol == mqtt.MQTTv311 else None
        client._sock = BufferedLink(  # type: ignore[attr-defined]
            client._sock,  # type: ignore[attr-defined]
            on_publish=fast,
            on_refused=self._on_refused,
            max_buffer=self.max_buffer,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self._serve(client, 0.05)
            connack = client.user_data_get()["connack"]
            if connack is not None:
                if connack.is_failure:
                    self._drop(client)
                    return addr, f"refused: {connack}"
                self._client = client
                return addr, None
            if not alive:
                self._drop(client)
                return addr, "connection lost before CONNACK"
        self._drop(client)
        return addr, f"no CONNACK within {timeout:g} s"

    @staticmethod
    def _drop(client: mqtt.Client) -> None:
        with contextlib.suppress(Exception):
            sock = client.socket()
            if sock is not None:
                sock.close()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        userdata["connack"] = reason_code
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        self._connections += 1
        log.info("connected to %s; subscribing", self.current_broker or "broker")
        client.subscribe(subscriptions(self.settings.prefix))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            # NATS can refuse a SUBSCRIBE for a few seconds after a node dies: try again by
            # reconnecting (possibly to another node) rather than staying deaf.
            log.warning("broker refused a subscription (%s); reconnecting", failed[0])
            client.disconnect()
            return
        self._connected = True
        # A fence: Mosquitto handles a client's packets in order and queues the retained
        # messages of a SUBSCRIBE before it reads the next packet, so the answer to this
        # UNSUBSCRIBE (of a topic never subscribed) comes after the whole retained snapshot.
        client.unsubscribe(f"{self.settings.prefix}/collector-fence/{self.client_id}")

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        log.info(
            "retained state delivered: %d agents, %d regions",
            len(self.state.agents),
            len(self.state.regions),
        )
        self.retained_loaded.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected = False
        self.retained_loaded.clear()

    # --- messages --------------------------------------------------------------------------

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        # What paho hands over: anything but a QoS 0 PUBLISH, which the link delivers itself.
        raw = msg._topic  # paho keeps the topic's bytes; .topic decodes them
        try:
            if self._limiter is not None and not self._limiter.allow(raw, time.monotonic()):
                self.state.dropped["rate-limited"] += 1
                return
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = None
            self._ingest(topic, msg.payload)
        except Exception as exc:  # no message may end the loop
            self._handler_error(raw, exc)

    def _on_raw_publish(self, topic: bytes, payload: bytes) -> None:
        # The hot path (every QoS 0 PUBLISH): keep the work before _ingest small.
        try:
            if self._limiter is not None and not self._limiter.allow(topic, time.monotonic()):
                self.state.dropped["rate-limited"] += 1
                return
            try:
                text = topic.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            self._ingest(text, payload)
        except Exception as exc:  # no message may end the loop
            self._handler_error(topic, exc)

    def _on_refused(self, topic: bytes, reason: str) -> None:
        """A PUBLISH the link would not hold or could not frame (see link.py)."""
        detail = REFUSED_DETAIL.get(reason, reason)
        try:
            result = self.state.refuse(topic, reason, detail)
            self._log_rejection(result)
        except Exception as exc:  # no message may end the loop
            self._handler_error(topic, exc)

    def _handler_error(self, topic: bytes | str, exc: BaseException) -> None:
        self.state.handler_errors += 1
        shown = topic.decode("utf-8", "replace") if isinstance(topic, bytes) else topic
        self._errors.warning(
            "handler-error",
            "error handling a message on %s (going on with the next): %s: %s",
            printable(shown, 200),
            type(exc).__name__,
            printable(str(exc), 300),
            exc_info=exc,
        )

    def _log_rejection(self, result: Result) -> None:
        self._rejects.warning(
            result.reason,
            "rejected %s message for %r: %s: %s",
            result.kind or "unknown",
            result.ident,
            result.reason,
            printable(result.detail, 300),
        )

    def _ingest(self, topic: str | None, payload: bytes) -> None:
        now = time.monotonic()
        if topic is None:
            self.state.messages += 1
            result = self.state.reject("bad-topic", "topic is not UTF-8", "", "")
        else:
            result = self.state.ingest(topic, payload, now)
        outcome = result.outcome
        if outcome is Outcome.APPLIED:
            if self.on_report is not None and result.kind == "report":
                self.on_report(result.ident, result.message, now)  # type: ignore[arg-type]
        elif outcome is Outcome.REJECTED:
            self._log_rejection(result)
        elif outcome is Outcome.IGNORED:
            log.info("ignored status for %r: %s", result.ident, result.detail)
        elif outcome is Outcome.WITHDRAWN:
            log.info("%s of %r withdrawn", result.kind, result.ident)
        if self.on_message is not None:
            self.on_message(result, now)

    # --- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = self._client
            if client is not None:
                self._pump(client)
                self._connected = False
                self._drop(client)
                self._client = None
                if self._stop.is_set():
                    return
                log.warning("lost the connection to %s", self.current_broker)
                attempt = 0
            delay = backoff_delay(attempt, base=0.5, cap=RECONNECT_CAP_S)
            if self._stop.wait(delay):
                return
            addr, err = self._connect_one(self.settings.connect_timeout_s)
            if err is not None:
                attempt += 1
                log.warning("cannot connect to %s: %s (attempt %d)", addr, err, attempt)

    def _pump(self, client: mqtt.Client) -> None:
        """Serve one connection until it drops or stop() is called."""
        while not self._stop.is_set() and self._serve(client, 0.25):
            pass

    def _serve(self, client: mqtt.Client, wait_s: float) -> bool:
        """Write what paho queued, wait up to wait_s for input, let paho read it for at most
        SLICE_S, then let it check its keepalive. False once the connection is gone."""
        link = client.socket()
        if not isinstance(link, BufferedLink):
            return False
        try:
            if client.want_write() and client.loop_write() not in (
                mqtt.MQTT_ERR_SUCCESS,
                mqtt.MQTT_ERR_AGAIN,
            ):
                return False
            link.wait(wait_s)
            until = time.monotonic() + SLICE_S
            while link.readable():
                if client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    return False
                if self._stop.is_set() or time.monotonic() > until:
                    break
            return client.loop_misc() == mqtt.MQTT_ERR_SUCCESS and client.socket() is not None
        except Exception as exc:  # paho's state is unknown now: reconnect
            self._handler_error(str(self.current_broker or "broker"), exc)
            return False
