"""The topics an agent holds on every connection, and every SUBACK checked.

A refused SUBSCRIBE (a NATS node for a few seconds after a peer died) is sent again after a
short jittered wait; an unanswered one (a NATS node that just lost a peer can leave it so)
is sent again after the connect timeout. Each try is counted as `subscribe-failures`.
"""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import Callable
from typing import Optional

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from clockfleet.agent.loop_host import ProbeHost
from clockfleet.protocol.session import backoff_delay, refusal

log = logging.getLogger("clockfleet.agent")


class Subscriptions:
    def __init__(
        self,
        agent_id: str,
        client: mqtt.Client,
        counters: collections.Counter[str],
        rng: random.Random,
        connected: Callable[[], bool],
        suback_timeout_s: float,
    ) -> None:
        self.id = agent_id
        self.client = client
        self.counters = counters
        self.rng = rng
        self._connected = connected
        self._suback_timeout_s = suback_timeout_s
        self.host: Optional[ProbeHost] = None
        self._pending: dict[int, list[str]] = {}  # SUBSCRIBE mid -> topics, until SUBACK
        self.wanted: list[str] = []  # topics to hold on every connection

    def attach(self, host: ProbeHost) -> None:
        self.host = host

    def hold(self, wanted: list[str]) -> None:
        """Keep exactly these topics subscribed, on this connection and every later one."""
        dropped = [t for t in self.wanted if t not in wanted]
        added = [t for t in wanted if t not in self.wanted]
        self.wanted = list(wanted)
        if self._connected():
            if dropped:
                self.client.unsubscribe(dropped)
            if added:
                self.subscribe(added)

    def connected(self) -> None:
        """A new connection: nothing is pending on it; subscribe to all that is held."""
        self._pending.clear()
        if self.wanted:
            self.subscribe(list(self.wanted))

    def lost(self) -> None:
        self._pending.clear()

    def subscribe(self, topics: list[str]) -> None:
        assert self.host is not None
        rc, mid = self.client.subscribe([(t, 1) for t in topics])
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._pending[mid] = topics
            self.host.call_later(self._suback_timeout_s, lambda: self._no_suback(mid))

    def _no_suback(self, mid: int) -> None:
        topics = self._pending.pop(mid, None)
        if topics is None or not self._connected():
            return
        self.counters["subscribe-failures"] += 1
        log.warning("%s: no SUBACK for %s; subscribing again", self.id, ", ".join(topics))
        self.subscribe(topics)

    def suback(self, mid: int, reason_codes: list[ReasonCode]) -> None:
        topics = self._pending.pop(mid, None)
        why = refusal(reason_codes)
        if why is not None and topics is not None:
            assert self.host is not None
            self.counters["subscribe-failures"] += 1
            log.warning("%s: subscribe refused (%s); retrying", self.id, why)
            retry = topics
            self.host.call_later(backoff_delay(1, 1.0, 4.0, self.rng), lambda: self._retry(retry))

    def _retry(self, topics: list[str]) -> None:
        if self._connected():
            self.subscribe(topics)
