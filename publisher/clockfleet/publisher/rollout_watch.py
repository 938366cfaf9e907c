"""What a rollout decision reads: every region list and every agent's report, live.

One plain subscriber at QoS 0 (Mosquitto drops retained messages beyond 1020 to a QoS 1
wildcard subscriber) on the region lists and the reports, retained snapshot first (ended by
the session fence) and live updates after. Lists count only when their signature verifies
with a key the publisher holds; reports are strictly decoded. The first report seen from an
agent that is not about a canary is its baseline offset (for the offset-jump check).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from clockfleet.protocol import signing
from clockfleet.protocol.codec import Rejected, decode
from clockfleet.protocol.connection import ConnectionSettings, connect_blocking, new_client
from clockfleet.protocol.messages import Report, ServerList
from clockfleet.protocol.session import fence_topic
from clockfleet.protocol.topics import (
    TopicError,
    all_agents_filter,
    all_servers_filter,
    parse_topic,
)


@dataclass
class Snapshot:
    lists: dict[str, tuple[ServerList, dict]] = field(default_factory=dict)  # verified only
    list_problems: dict[str, str] = field(default_factory=dict)
    reports: dict[str, Report] = field(default_factory=dict)
    baselines: dict[str, float | None] = field(default_factory=dict)


class Watch:
    def __init__(
        self, settings: ConnectionSettings, prefix: str, trust: signing.TrustStore
    ) -> None:
        self.prefix = prefix
        self.trust = trust
        self.client_id = f"clockfleet-rollout-{secrets.token_hex(4)}"
        self.client = new_client(settings, self.client_id)
        self._lock = threading.Lock()
        self._snap = Snapshot()
        self._fenced = threading.Event()
        self._fence_mid: int | None = None
        self.client.on_message = self._on_message
        self.client.on_unsubscribe = self._on_unsubscribe
        self.settings = settings

    def start(self, timeout_s: float) -> None:
        """Connect, subscribe, and wait for the end of the retained snapshot."""
        connect_blocking(self.client, self.settings, timeout_s=timeout_s)
        filters = [all_servers_filter(self.prefix), all_agents_filter(self.prefix, "report")]
        self.client.subscribe([(f, 0) for f in filters])
        _, self._fence_mid = self.client.unsubscribe(fence_topic(self.prefix, self.client_id))
        if not self._fenced.wait(timeout_s):
            raise TimeoutError(f"no UNSUBACK within {timeout_s:g} s: the fleet's state is unknown")

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid == self._fence_mid:
            self._fenced.set()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            ref = parse_topic(self.prefix, msg.topic)
        except TopicError:
            return
        with self._lock:
            if ref.kind == "servers":
                self._on_list(ref.ident, msg.payload)
            elif ref.kind == "report" and msg.payload:
                try:
                    report, _ = decode(Report, msg.payload, topic_id=ref.ident)
                except Rejected:
                    return
                self._snap.reports[ref.ident] = report
                if report.change is None and ref.ident not in self._snap.baselines:
                    self._snap.baselines[ref.ident] = report.offset_s if report.ok else None

    def _on_list(self, region: str, payload: bytes) -> None:
        if not payload:
            self._snap.lists.pop(region, None)
            return
        try:
            sl, obj = decode(ServerList, payload, topic_id=region)
            if self.trust:
                signing.verify(obj, self.trust)
        except Rejected as exc:
            self._snap.list_problems[region] = f"{exc.reason}: {exc.detail}"
            return
        self._snap.lists[region] = (sl, obj)
        self._snap.list_problems.pop(region, None)

    def snapshot(self) -> Snapshot:
        with self._lock:
            s = self._snap
            return Snapshot(
                dict(s.lists), dict(s.list_problems), dict(s.reports), dict(s.baselines)
            )

    def wait_list(self, region: str, version: int, timeout_s: float) -> bool:
        """Until the broker's copy of `region` is at `version` or later (our own publish)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            have = self.snapshot().lists.get(region)
            if have is not None and have[0].version >= version:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()
