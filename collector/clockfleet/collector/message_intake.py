"""What happens to one message, from the moment the socket reader or paho hands it over: the
per-topic rate limit, strict decoding into FleetState, the hooks, and the log. Nothing here
raises: a message that fails in an unexpected way is counted in `state.handler_errors` and
logged (rate-limited, with its topic), and the next message is handled.

The MQTT side (ingest.py) calls three entry points: `on_raw_publish(topic, payload)` for
every QoS 0 PUBLISH the socket reader frames itself (the hot path, socket_reader.py),
`on_message` as paho's callback for anything else, `on_refused(topic, reason)` for a PUBLISH
the framing would not hold (packet_framing.py). Between reads it calls `apply_held()`, and
`new_connection()` on every connection.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from clockfleet.collector import paho_socket
from clockfleet.collector.fleet_state import Disposition, FleetState, Result
from clockfleet.collector.ratelimit import RateLimit, RateLimitedLog, RateLimiter
from clockfleet.collector.text import printable
from clockfleet.protocol.messages import Report

log = logging.getLogger("clockfleet.collector")

REFUSED_DETAIL = {
    "oversized": "a PUBLISH larger than any acceptable message (skipped unread)",
    "malformed-packet": "a PUBLISH whose topic length runs past the packet",
}

# Topics whose newest over-the-limit message waits to be applied, at most (one each).
MAX_HELD = 65_536

ReportHook = Callable[[str, Report, float], None]
MessageHook = Callable[[Result, float], None]


@dataclass(frozen=True, slots=True)
class Hooks:
    """What a program built on the collector sees of the messages, in the MQTT thread (keep
    them cheap): `on_report(agent, report, t)` for every accepted report, `on_message(result,
    t)` for every message whatever became of it; `t` is time.monotonic() at hand-over."""

    on_report: ReportHook | None = None
    on_message: MessageHook | None = None


class Intake:
    def __init__(self, state: FleetState, hooks: Hooks, rate_limit: RateLimit | None) -> None:
        self.state = state
        self.hooks = hooks
        self._limiter = RateLimiter(rate_limit) if rate_limit is not None else None
        # A topic over its rate keeps its newest message here, applied once its bucket has a
        # token again: a flood costs no more than the limit, yet the collector never sits on
        # an agent's stale report until its next one (an hour away) because the last of a
        # quick series came over the limit. Whatever a newer message replaces is dropped.
        self._held: dict[bytes, tuple[str | None, bytes]] = {}
        self._errors = RateLimitedLog()
        self._rejects = RateLimitedLog()

    def new_connection(self) -> None:
        """Full buckets: a new connection's retained snapshot comes in one burst."""
        if self._limiter is not None:
            self._limiter.reset()
        self._held.clear()  # the snapshot brings each topic's newest again

    def _over_limit(self, raw: bytes, text: str | None, payload: bytes) -> bool:
        """True when the topic is over its rate: the message is held (replacing an older
        held one, which is dropped) for apply_held()."""
        if self._limiter is None or self._limiter.allow(raw, time.monotonic()):
            return False
        if raw in self._held or len(self._held) >= MAX_HELD:
            self.state.dropped["rate-limited"] += 1
        if len(self._held) < MAX_HELD or raw in self._held:
            self._held[raw] = (text, payload)
        return True

    def apply_held(self) -> None:
        """Apply held messages whose topic has a token again (the collector's loop calls this
        between reads)."""
        if not self._held or self._limiter is None:
            return
        now = time.monotonic()
        for raw in list(self._held):
            if self._limiter.allow(raw, now):
                text, payload = self._held.pop(raw)
                try:
                    self._ingest(text, payload)
                except Exception as exc:  # no message may end the loop
                    self.handler_error(raw, exc)

    def on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        # What paho hands over: anything but a QoS 0 PUBLISH, which the link delivers itself.
        raw = paho_socket.raw_topic(msg)
        payload = bytes(msg.payload)  # paho's type allows a bytearray; it hands bytes
        try:
            try:
                topic = msg.topic
            except UnicodeDecodeError:
                topic = None
            if self._over_limit(raw, topic, payload):
                return
            self._ingest(topic, payload)
        except Exception as exc:  # no message may end the loop
            self.handler_error(raw, exc)

    def on_raw_publish(self, topic: bytes, payload: bytes) -> None:
        # The hot path (every QoS 0 PUBLISH): keep the work before _ingest small.
        try:
            try:
                text = topic.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if self._limiter is not None and self._over_limit(topic, text, payload):
                return
            self._ingest(text, payload)
        except Exception as exc:  # no message may end the loop
            self.handler_error(topic, exc)

    def on_refused(self, topic: bytes, reason: str) -> None:
        """A PUBLISH the framing would not hold or could not frame (packet_framing.py)."""
        detail = REFUSED_DETAIL.get(reason, reason)
        try:
            result = self.state.refuse(topic, reason, detail)
            self._log_rejection(result)
        except Exception as exc:  # no message may end the loop
            self.handler_error(topic, exc)

    def handler_error(self, topic: bytes | str, exc: BaseException) -> None:
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
        outcome, hooks = result.outcome, self.hooks
        if outcome is Disposition.APPLIED:
            if hooks.on_report is not None and isinstance(result.message, Report):
                hooks.on_report(result.ident, result.message, now)
        elif outcome is Disposition.REJECTED:
            self._log_rejection(result)
        elif outcome is Disposition.IGNORED:
            log.info("ignored status for %r: %s", result.ident, result.detail)
        elif outcome is Disposition.WITHDRAWN:
            log.info("%s of %r withdrawn", result.kind, result.ident)
        if hooks.on_message is not None:
            hooks.on_message(result, now)
