"""What a rollout decision reads: every region list and every agent's report, live.

It reads on the command's one MQTT session (`broker_io.PublisherSession`): the shipped
broker binds client ids to identities, so a second connection as `publisher` would close
the first and the two would knock each other off. It subscribes at QoS 0 (Mosquitto drops retained
messages beyond 1020 to a QoS 1 wildcard subscriber) to the region lists and the reports,
checks the SUBACK (a refused subscription is an error, never an empty region), takes the
retained snapshot up to the session fence and live updates after. Lists count only when
their signature verifies with a key the publisher holds; reports are strictly decoded. The
first report seen from an agent that is not about a canary is its baseline offset (for the
offset-jump check). With the publisher's record at hand, a list is also judged against it:
a copy older than the one it issued last is a replay, stale, kept apart in `list_problems`
and never acted on. Profiles are read too, judged as `clockfleet publish` judges them: the
end of a zone change publishes profiles, and their next versions count from these.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from clockfleet.protocol import signing
from clockfleet.protocol.codec import Rejected, decode
from clockfleet.protocol.messages import Report, ServerList
from clockfleet.protocol.topics import (
    TopicError,
    all_agents_filter,
    all_servers_filter,
    parse_topic,
)
from clockfleet.publisher import broker_io
from clockfleet.publisher.broker_copies import BrokerCopy, judge_copy
from clockfleet.publisher.issued_record import IssuedRecord
from clockfleet.publisher.wire_objects import WireObject


@dataclass
class Snapshot:
    # region -> its list, decoded and as the object it was signed as; verified ones only
    lists: dict[str, tuple[ServerList, WireObject]] = field(default_factory=dict)
    list_problems: dict[str, str] = field(default_factory=dict)
    reports: dict[str, Report] = field(default_factory=dict)
    baselines: dict[str, float | None] = field(default_factory=dict)
    profiles: dict[str, BrokerCopy] = field(default_factory=dict)  # agent -> its judged copy


class Watch:
    def __init__(
        self,
        session: broker_io.PublisherSession,
        prefix: str,
        trust: signing.TrustStore,
        record: IssuedRecord | None = None,
    ) -> None:
        self.session = session
        self.prefix = prefix
        self.trust = trust
        self.record = record
        self.filters = [
            all_servers_filter(prefix),
            all_agents_filter(prefix, "report"),
            all_agents_filter(prefix, "profile"),
        ]
        self._lock = threading.Lock()
        self._snap = Snapshot()

    def start(self, timeout_s: float) -> None:
        """Subscribe on the session and wait for the end of the retained snapshot; raises
        broker_io.BrokerError when the broker refuses or does not answer."""
        for f in self.filters:
            self.session.client.message_callback_add(f, self._on_message)
        broker_io.subscribe_checked(
            self.session, self.filters, timeout_s, "a rollout cannot be judged without them"
        )
        broker_io.fence(self.session, timeout_s)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            ref = parse_topic(self.prefix, msg.topic)
        except TopicError:
            return
        with self._lock:
            if ref.kind == "servers":
                self._on_list(ref.ident, bytes(msg.payload))
            elif ref.kind == "report" and msg.payload:
                try:
                    report, _ = decode(Report, msg.payload, topic_id=ref.ident)
                except Rejected:
                    return
                self._snap.reports[ref.ident] = report
                if report.change is None and ref.ident not in self._snap.baselines:
                    self._snap.baselines[ref.ident] = report.offset_s if report.ok else None
            elif ref.kind == "profile":
                self._on_profile(ref.ident, bytes(msg.payload))

    def _on_profile(self, agent: str, payload: bytes) -> None:
        if not payload:
            self._snap.profiles.pop(agent, None)
            return
        have = judge_copy("profile", agent, payload, self.trust)
        if self.record is not None and have.version is not None:
            have.stale = self.record.staleness(self.prefix, "profile", agent, have.version, payload)
        self._snap.profiles[agent] = have

    def _on_list(self, region: str, payload: bytes) -> None:
        if not payload:
            self._snap.lists.pop(region, None)
            return
        try:
            sl, obj = signing.decode_signed(ServerList, payload, region, self.trust)
        except Rejected as exc:
            self._snap.lists.pop(region, None)
            self._snap.list_problems[region] = f"{exc.reason}: {exc.detail}"
            return
        if self.record is not None:
            stale = self.record.staleness(self.prefix, "region", region, sl.version, payload)
            if stale is not None:
                self._snap.lists.pop(region, None)
                self._snap.list_problems[region] = f"stale: {stale}"
                return
        self._snap.lists[region] = (sl, obj)
        self._snap.list_problems.pop(region, None)

    def snapshot(self) -> Snapshot:
        with self._lock:
            s = self._snap
            return Snapshot(
                dict(s.lists),
                dict(s.list_problems),
                dict(s.reports),
                dict(s.baselines),
                dict(s.profiles),
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
        """Stop reading; the session stays open for its owner to close."""
        for f in self.filters:
            with contextlib.suppress(Exception):
                self.session.client.message_callback_remove(f)
        with contextlib.suppress(Exception):
            self.session.client.unsubscribe(self.filters)
