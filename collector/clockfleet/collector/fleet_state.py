"""The fleet as the broker's messages describe it: per agent its latest report and status,
per region the published list. Pure: no MQTT, no threads of its own.

`FleetState.ingest(topic, payload)` is the one way in. Every payload is decoded strictly
(`clockfleet.protocol.codec.decode`); a refused one is counted under its reason and never
replaces the last good state. Memory per agent is bounded: the latest decoded report and
status, the receive time and the time of the last good sync, nothing else.

Thread safety: one thread ingests (the MQTT loop) while another reads (the /metrics scrape,
the status table). Writers replace whole entries and counters under the GIL; readers take
`snapshot()`, a cheap shallow copy, and build their output from it without a lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from clockfleet.protocol.codec import REJECT_REASONS, Rejected, decode
from clockfleet.protocol.messages import Report, ServerList, Status
from clockfleet.protocol.topics import TopicError, parse_topic

KINDS = ("report", "status", "servers")

# Not bad messages, so not under "rejected": a status whose session is older than the one
# already known (a will that fired on session takeover after the new session said online);
# a report of an older list of the same region than the one already known (a retained copy
# a broker replays from a store that is behind: the collector reads the retained state again
# after a reconnection, ingest.py).
IGNORED_REASONS = ("older-session", "older-list")
# Refused by the collector's own MQTT framing, before any decoding (see link.py).
FRAMING_REASONS = ("malformed-packet",)
# Messages never looked at: the excess of one topic's flood (see ingest.RateLimiter).
DROPPED_REASONS = ("rate-limited",)


class Disposition(Enum):
    APPLIED = "applied"
    WITHDRAWN = "withdrawn"
    REJECTED = "rejected"
    IGNORED = "ignored"


@dataclass(slots=True)
class AgentEntry:
    report: Report | None = None
    report_received: float = 0.0  # caller's clock (monotonic in the collector)
    last_ok_at: float | None = None  # POSIX time of the last report with ok: true
    status: Status | None = None

    def region(self) -> str:
        if self.report is not None:
            return self.report.region
        if self.status is not None and self.status.region is not None:
            return self.status.region
        return ""


@dataclass(slots=True)
class Result:
    """What one message did; `ident` is the agent (or region for a list)."""

    outcome: Disposition
    kind: str = ""
    ident: str = ""
    message: Report | Status | ServerList | None = None
    reason: str = ""
    detail: str = ""


@dataclass(slots=True)
class Snapshot:
    agents: dict[str, AgentEntry]
    regions: dict[str, ServerList]


@dataclass
class FleetState:
    prefix: str
    agents: dict[str, AgentEntry] = field(default_factory=dict)
    regions: dict[str, ServerList] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    rejected: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*REJECT_REASONS, *FRAMING_REASONS), 0)
    )
    ignored: dict[str, int] = field(default_factory=lambda: dict.fromkeys(IGNORED_REASONS, 0))
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROPPED_REASONS, 0))
    # Exceptions other than a rejection while handling one message: a bug or an input the
    # decoders did not foresee. Counted, logged by the caller, and the message is not applied.
    handler_errors: int = 0
    messages: int = 0  # every message handed to ingest(), whatever became of it

    def ingest(self, topic: str, payload: bytes, now: float = 0.0) -> Result:
        """Apply one MQTT message; `now` is the receive time on the caller's clock."""
        self.messages += 1
        try:
            ref = parse_topic(self.prefix, topic)
        except TopicError as exc:
            return self.reject("bad-topic", str(exc), "", "")
        kind = ref.kind
        if kind not in self.received:
            return self.reject("bad-topic", f"topic {topic!r} is not read here", kind, ref.ident)
        self.received[kind] += 1
        ident = ref.ident
        if not payload:
            return self._withdraw(kind, ident)
        try:
            if kind == "report":
                report, _ = decode(Report, payload, topic_id=ident)
                return self._apply_report(ident, report, now)
            if kind == "status":
                status, _ = decode(Status, payload, topic_id=ident)
                return self._apply_status(ident, status)
            servers, _ = decode(ServerList, payload, topic_id=ident)
        except Rejected as exc:
            return self.reject(exc.reason, exc.detail, kind, ident)
        self.regions[ident] = servers
        return Result(Disposition.APPLIED, kind, ident, servers)

    def _apply_report(self, agent: str, report: Report, now: float) -> Result:
        entry = self.agents.get(agent)
        if entry is None:
            entry = self.agents[agent] = AgentEntry()
        held = entry.report
        # List versions of a region only grow, so an agent's reports do too: a lower one is
        # an old copy. (A move to another region starts another sequence: compared only
        # within one region.)
        if (
            held is not None
            and held.region == report.region
            and report.list_version < held.list_version
        ):
            self.ignored["older-list"] += 1
            why = f"list {report.list_version} < held {held.list_version}"
            return Result(Disposition.IGNORED, "report", agent, report, "older-list", why)
        entry.report = report
        entry.report_received = now
        if report.ok:
            at = report.at.timestamp()
            if entry.last_ok_at is None or at > entry.last_ok_at:
                entry.last_ok_at = at
        return Result(Disposition.APPLIED, "report", agent, report)

    def _apply_status(self, agent: str, status: Status) -> Result:
        entry = self.agents.get(agent)
        if entry is None:
            entry = self.agents[agent] = AgentEntry()
        current = entry.status
        # The session counter orders online/offline: a will from an older session that fires
        # after the new session said online must not mark a live agent offline.
        if current is not None and status.session < current.session:
            self.ignored["older-session"] += 1
            return Result(
                Disposition.IGNORED,
                "status",
                agent,
                status,
                "older-session",
                f"session {status.session} < current {current.session}",
            )
        entry.status = status
        return Result(Disposition.APPLIED, "status", agent, status)

    def _withdraw(self, kind: str, ident: str) -> Result:
        if kind == "servers":
            self.regions.pop(ident, None)
            return Result(Disposition.WITHDRAWN, kind, ident)
        entry = self.agents.get(ident)
        if entry is not None:
            if kind == "report":
                entry.report = None
                entry.last_ok_at = None
            else:
                entry.status = None
            if entry.report is None and entry.status is None:
                del self.agents[ident]
        return Result(Disposition.WITHDRAWN, kind, ident)

    def refuse(self, topic: bytes, reason: str, detail: str) -> Result:
        """Count a message refused before decoding (its payload was never held)."""
        self.messages += 1
        try:
            ref = parse_topic(self.prefix, topic.decode("utf-8"))
        except (UnicodeDecodeError, TopicError):
            return self.reject(reason, detail, "", "")
        if ref.kind in self.received:
            self.received[ref.kind] += 1
        return self.reject(reason, detail, ref.kind, ref.ident)

    def reject(self, reason: str, detail: str, kind: str, ident: str) -> Result:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return Result(Disposition.REJECTED, kind, ident, None, reason, detail)

    def snapshot(self) -> Snapshot:
        # dict() of a dict is one C call under the GIL: consistent against the ingest thread.
        return Snapshot(dict(self.agents), dict(self.regions))


def is_behind(entry: AgentEntry, regions: dict[str, ServerList]) -> bool:
    """The agent's last report applied an older list than its region's published one.

    The one definition of "behind the published list": /metrics counts it per region
    (`clockfleet_region_agents_behind`), `clockfleet status` marks it per agent, and the
    recording rule `clockfleet:agent_behind_list` in config/alerts.yml is the same rule in
    PromQL (an agent with no report, or a region with no published list, is not behind).
    """
    report = entry.report
    if report is None:
        return False
    published = regions.get(report.region)
    return published is not None and report.list_version < published.version
