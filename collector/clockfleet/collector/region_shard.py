"""A collector that serves some regions only (`clockfleet collector --region R`): which
agents' reports and statuses it keeps, decided before decoding where it can be.

Report and status topics name the agent, not its region (the wire contract:
`{prefix}/agents/{agent}/report`), so no topic filter can pick a region's agents: every
collector still receives every report. What sharding saves is the rest: the strict decode
of the other regions' reports, their memory, and their series on /metrics. Region lists are
per region on the wire, so those are subscribed by topic (ingest.py).

Which region an agent is in: the `region` of its latest report (the list it applied). Only
while no report of the agent has been seen does its status's region decide; a status without
a region is kept (it cannot be placed) until a report places the agent. When an agent's
report names another region, the agent leaves this collector: its entry is dropped, and its
later statuses are skipped until a report brings it back, whose status is then read again
from the broker (`status_requests`: a one-off subscription to that agent's status topic).

Reading the region without decoding: our agents write compact JSON with one `"region":"ID"`
member. When the payload holds exactly one unescaped `"region"` key with a plain id value,
that is the region; otherwise (none, two, escapes) the payload is parsed with json to read
its top-level `region`. Only a payload the agent itself wrote could mislead the fast path
(an escaped top-level key beside a nested plain one), and what it gains is no more than a
report naming another region: its agent goes unseen by this collector (docs/trust.md).
Skipped messages are counted in clockfleet_collector_messages_dropped_total{reason=
"other-region"}; withdrawals (empty payloads) always pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt

from clockfleet.collector import paho_socket
from clockfleet.collector.fleet_state import FleetState
from clockfleet.protocol.ids import ID_PATTERN, is_valid_id
from clockfleet.protocol.topics import servers_topic, status_topic

DROP_REASON = "other-region"
_KEY = b'"region"'
_VALUE = re.compile(rb'\s*:\s*"(' + ID_PATTERN.encode() + rb')"')
# At most this many agents remembered as "in another region" (their statuses are skipped);
# beyond it a status of such an agent is judged by its own region. Bounded like every
# collector table: ~100 bytes an id.
MAX_ELSEWHERE = 1_000_000


class _Unplaced:
    """The payload names no region (a status without one), or none could be read."""


UNPLACED = _Unplaced()


def claimed_region(payload: bytes) -> str | _Unplaced:
    """The top-level `region` of a report or status payload, read cheaply when it can be."""
    at = payload.find(_KEY)
    if at > 0 and payload[at - 1] != 0x5C and payload.find(_KEY, at + len(_KEY)) < 0:
        m = _VALUE.match(payload, at + len(_KEY))
        if m is not None:
            return m.group(1).decode("ascii")
    if at < 0 and b"\\" not in payload:
        return UNPLACED  # no region key, and no escape could hide one
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return UNPLACED  # strict decoding will refuse it and say why
    region = obj.get("region") if isinstance(obj, dict) else None
    return region if isinstance(region, str) else UNPLACED


class RegionShard:
    """The decision, per report or status, whether this collector keeps it."""

    def __init__(self, regions: Iterable[str], prefix: str, state: FleetState) -> None:
        self.regions = frozenset(regions)
        self.state = state
        self._head = f"{prefix}/agents/".encode()
        self._elsewhere: set[str] = set()  # agents whose latest report is another region's
        self._status_skipped: set[str] = set()  # ... whose last status was not kept
        self._status_requests: list[str] = []
        state.dropped.setdefault(DROP_REASON, 0)

    def admit(self, topic: bytes, payload: bytes) -> bool:
        """True: hand the message on (to the rate limit and strict decoding). False: it is
        another region's, counted and dropped. Never raises: when in doubt, hand it on."""
        try:
            return self._admit(topic, payload)
        except Exception:  # no message may end the loop; the intake counts what it cannot use
            return True

    def _admit(self, topic: bytes, payload: bytes) -> bool:
        if not payload or not topic.startswith(self._head):
            return True  # withdrawals, region lists, anything off-contract: not ours to judge
        agent_b, _, kind = topic[len(self._head) :].partition(b"/")
        agent = agent_b.decode("ascii", "replace")
        if not is_valid_id(agent):
            return True  # strict decoding refuses the topic
        if kind == b"report":
            return self._report(agent, claimed_region(payload))
        if kind == b"status":
            return self._status(agent, claimed_region(payload))
        return True

    def _report(self, agent: str, region: str | _Unplaced) -> bool:
        if isinstance(region, _Unplaced) or region in self.regions:
            if agent in self._elsewhere or agent in self._status_skipped:
                self._elsewhere.discard(agent)
                if agent in self._status_skipped:
                    self._status_skipped.discard(agent)
                    self._status_requests.append(agent)  # back (or first seen): read it again
            return True
        self._drop()
        if len(self._elsewhere) < MAX_ELSEWHERE:
            self._elsewhere.add(agent)
            self._status_skipped.add(agent)
        self.state.agents.pop(agent, None)  # moved away: another collector counts it now
        return False

    def _status(self, agent: str, region: str | _Unplaced) -> bool:
        entry = self.state.agents.get(agent)
        if entry is not None and entry.report is not None:
            return True  # its report placed it here
        if agent in self._elsewhere or (
            not isinstance(region, _Unplaced) and region not in self.regions
        ):
            self._drop()
            if len(self._status_skipped) < MAX_ELSEWHERE:
                self._status_skipped.add(agent)
            return False
        self._status_skipped.discard(agent)
        return True

    def _drop(self) -> None:
        self.state.dropped[DROP_REASON] += 1

    def status_requests(self) -> list[str]:
        """Agents whose status to read again (once each), for the MQTT loop to ask for."""
        out, self._status_requests = self._status_requests, []
        return out

    def forget_requests(self) -> None:
        """A new connection reads every status anyway (its retained snapshot)."""
        self._status_requests.clear()

    # --- where the MQTT side (ingest.py) plugs it in ---------------------------------------

    def raw_publish(
        self, forward: Callable[[bytes, bytes], None]
    ) -> Callable[[bytes, bytes], None]:
        """The socket reader's hand-over (every QoS 0 PUBLISH), filtered before `forward`."""

        def on_publish(topic: bytes, payload: bytes) -> None:
            if self.admit(topic, payload):
                forward(topic, payload)

        return on_publish

    def message(self, forward: MessageCallback) -> MessageCallback:
        """paho's on_message (every other PUBLISH), filtered before `forward`."""

        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            if self.admit(paho_socket.raw_topic(msg), bytes(msg.payload)):
                forward(client, userdata, msg)

        return on_message

    def ask_statuses(self, client: mqtt.Client, prefix: str) -> None:
        """Read each requested agent's retained status again: SUBSCRIBE to its topic, then
        UNSUBSCRIBE at once (the broker queues the retained copy with the SUBACK, before it
        handles the next packet). Called by the MQTT loop between reads, never from inside
        one."""
        for agent in self.status_requests():
            topic = status_topic(prefix, agent)
            client.subscribe(topic, 0)
            client.unsubscribe(topic)


MessageCallback = Callable[[mqtt.Client, object, mqtt.MQTTMessage], None]


def region_list_topics(prefix: str, regions: Iterable[str]) -> list[str]:
    """The region lists a sharded collector reads: its own regions', by topic."""
    return [servers_topic(prefix, r) for r in sorted(regions)]
