"""What to publish: the wire objects a fleet file means, compared with what the broker holds.

Content is everything but `version`, `issued_at` and `sig`; an entry whose content (and
signing key) matches the broker's copy is left alone. A changed entry gets
version = max(verified version on the broker, the publisher's own record, a date floor
YYYYMMDD00) + 1: the broker can lose its retained state (Mosquitto autosaves every 30 minutes
by default) and agents refuse any version not newer than the one they applied, so versions
never go back.

"Verified" is the point: only a broker copy whose signature verifies with a key this
publisher holds (its signing key, or a retired one given with --trust-key) counts. Anyone who
can write one retained message could otherwise push the version to 2^53-1, after which no
later list is newer and every agent refuses them all. An unverified copy is reported and
replaced by the next publish. A verified version far beyond the publisher's own record and
the date floor (more than MAX_VERSION_JUMP) is refused unless the operator accepts it: it
means a leaked key or a broken publisher, and adopting it would spend the version space.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from clockfleet.protocol import signing
from clockfleet.protocol.codec import Rejected, decode, encode, parse_json_object, utcnow_iso
from clockfleet.protocol.messages import (
    MAX_VERSION,
    PROFILE_SCHEMA,
    SERVERS_SCHEMA,
    Profile,
    ServerList,
)
from clockfleet.protocol.topics import profile_topic, servers_topic
from clockfleet.publisher.fleetfile import AgentProfile, Fleet, Region

Kind = Literal["region", "profile"]
VOLATILE = ("version", "issued_at", "sig")
STATE_FORMAT = 1
# How far a verified version on the broker may run ahead of max(own record, today's date
# floor) and still be adopted without --accept-version-jump: 1,000,000 is a year of date
# floors (YYYYMMDD00 grows by 10^6 a year). Another publisher sharing the key, or a clock a
# few days ahead, stays far below it; 2^53-1 (the end of the version space) is far above.
MAX_VERSION_JUMP = 1_000_000


def region_object(region: Region) -> dict[str, Any]:
    """A region's `clock.servers/1` object without version, issued_at and sig."""
    obj: dict[str, Any] = {"schema": SERVERS_SCHEMA, "region": region.id}
    if region.timezone is not None:
        obj["timezone"] = region.timezone
    if region.poll_interval_s is not None:
        obj["poll_interval_s"] = region.poll_interval_s
    if region.resync_jitter_s is not None:
        obj["resync_jitter_s"] = region.resync_jitter_s
    obj["servers"] = [{"host": s.host, "port": s.port} for s in region.servers]
    return obj


def profile_object(agent: AgentProfile) -> dict[str, Any]:
    """An agent's `clock.profile/1` object without version, issued_at and sig."""
    return {
        "schema": PROFILE_SCHEMA,
        "agent": agent.id,
        "region": agent.region,
        "timezone": agent.timezone,
    }


def content_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in VOLATILE}


def signer_of(obj: dict[str, Any]) -> str | None:
    sig = obj.get("sig")
    return sig.get("key_id") if isinstance(sig, dict) else None


def date_floor(now: datetime | None = None) -> int:
    """YYYYMMDD00 of today (UTC), like a DNS zone serial: a floor no lost state goes below."""
    return int((now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d")) * 100


# --- what the broker holds ---------------------------------------------------------------


@dataclass
class Retained:
    """One retained payload as the broker holds it, decoded strictly."""

    version: int | None  # as the payload states it; None when there is no plausible one
    obj: dict[str, Any] | None  # None when the payload does not decode
    problem: str | None = None  # why it does not decode (then it is always republished)
    verified_by: str | None = None  # the key id whose signature verifies, if any
    # Why its version does not count, when the publisher holds keys and it fails them.
    trust_problem: str | None = None

    @property
    def signature_ok(self) -> bool:
        return self.verified_by is not None

    @property
    def counted_version(self) -> int | None:
        """The version that bounds the next one: only a verified copy's."""
        return self.version if self.verified_by is not None else None


def read_retained(
    kind: Kind, ident: str, payload: bytes, trust: signing.TrustStore | None
) -> Retained:
    cls = ServerList if kind == "region" else Profile
    try:
        msg, obj = decode(cls, payload, topic_id=ident)
    except Rejected as exc:
        problem = f"{exc.reason}: {exc.detail}"
        # A copy agents refuse today may still be one we signed and some agent applied
        # (an older agent, a looser decoder): its version counts if, and only if, it is ours.
        raw = _raw_object(payload)
        # Another entry's signed copy replayed on this topic verifies too, but is not this one.
        if raw is not None and raw.get("region" if kind == "region" else "agent") != ident:
            raw = None
        version = _plausible_version(raw.get("version")) if raw is not None else None
        verified_by, trust_problem = _verify(raw, trust) if version is not None else (None, None)
        return Retained(version, None, problem, verified_by, trust_problem)
    verified_by, trust_problem = _verify(obj, trust)
    return Retained(msg.version, obj, None, verified_by, trust_problem)


def _verify(
    obj: dict[str, Any] | None, trust: signing.TrustStore | None
) -> tuple[str | None, str | None]:
    """(key id, None) when obj verifies with a held key, else (None, why not)."""
    if not trust or obj is None:
        return None, None
    try:
        return signing.verify(obj, trust), None
    except Rejected as exc:
        return None, exc.detail if exc.reason != "unsigned" else "unsigned"


def _raw_object(payload: bytes) -> dict[str, Any] | None:
    try:
        return parse_json_object(payload)
    except Rejected:
        return None


def _plausible_version(version: Any) -> int | None:
    if isinstance(version, int) and not isinstance(version, bool) and 0 <= version <= MAX_VERSION:
        return version
    return None


# --- the publisher's own record ----------------------------------------------------------


@dataclass
class State:
    """Highest version issued per prefix, region and profile (the file --state-file names).

    {"format": 1, "prefixes": {"clock/v1": {"region": {"us-east": 2026112601},
                                            "profile": {"acme-01": 2026112601}}}}
    """

    path: Path
    prefixes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def get(self, prefix: str, kind: Kind, ident: str) -> int:
        return self.prefixes.get(prefix, {}).get(kind, {}).get(ident, 0)

    def record(self, prefix: str, kind: Kind, ident: str, version: int) -> None:
        table = self.prefixes.setdefault(prefix, {}).setdefault(kind, {})
        table[ident] = max(version, table.get(ident, 0))

    def save(self) -> None:
        """Atomically (temp file + rename): a crash never leaves half a record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": STATE_FORMAT, "prefixes": self.prefixes}, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class StateError(ValueError):
    pass


def load_state(path: Path) -> State:
    if not path.exists():
        return State(path)
    try:
        data = json.loads(path.read_text())
        prefixes = data["prefixes"]
        ok = data.get("format") == STATE_FORMAT and all(
            isinstance(v, int) and not isinstance(v, bool)
            for kinds in prefixes.values()
            for table in kinds.values()
            for v in table.values()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(f"state file {path}: unreadable ({exc}); fix or remove it") from None
    if not ok:
        raise StateError(f"state file {path}: not a clockfleet publisher state; fix or remove it")
    return State(path, prefixes)


# --- the plan ----------------------------------------------------------------------------


@dataclass
class Change:
    kind: Kind
    ident: str
    topic: str
    action: Literal["publish", "withdraw", "keep-unlisted", "unchanged"]
    old_version: int | None
    new_version: int | None = None
    fields: list[str] = field(default_factory=list)  # what differs, for the operator
    payload: bytes = b""
    not_counted: str | None = None  # why the broker's version was not counted

    def describe(self) -> str:
        """One line for the operator: what it is, and what happens (or happened) to it."""
        name = f"{self.kind} {self.ident}"
        old = "absent" if self.old_version is None else str(self.old_version)
        if self.not_counted is not None and self.old_version is not None:
            old += f" (not counted: {self.not_counted})"
        if self.action == "publish":
            why = f" ({', '.join(self.fields)})" if self.fields else ""
            return f"{name}: {old} -> {self.new_version}{why}"
        if self.action == "withdraw":
            return f"{name} (version {old} on the broker, not in the file)"
        if self.action == "keep-unlisted":
            return (
                f"{name}: on the broker (version {old}) but not in the file; "
                f"left in place (--prune withdraws it)"
            )
        return f"{name}: unchanged (version {old})"

    @property
    def verb(self) -> tuple[str, str]:
        """(what it would do, what it did)."""
        return ("publish", "published") if self.action == "publish" else ("withdraw", "withdrew")


@dataclass
class Plan:
    changes: list[Change]

    def of(self, action: str) -> list[Change]:
        return [c for c in self.changes if c.action == action]


def _differences(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    if old is None:
        return []
    keys = sorted(set(content_of(old)) | set(content_of(new)))
    return [k for k in keys if old.get(k) != new.get(k)]


def _wanted(fleet: Fleet, prefix: str) -> list[tuple[Kind, str, str, dict[str, Any]]]:
    out: list[tuple[Kind, str, str, dict[str, Any]]] = []
    for rid in sorted(fleet.regions):
        out.append(("region", rid, servers_topic(prefix, rid), region_object(fleet.regions[rid])))
    for aid in sorted(fleet.agents):
        out.append(("profile", aid, profile_topic(prefix, aid), profile_object(fleet.agents[aid])))
    return out


class BuildError(ValueError):
    """A built object the wire contract refuses: a bug or a gap in the file's validation."""


class VersionJumpError(ValueError):
    """Verified versions on the broker too far ahead to adopt without the operator's word."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def make_plan(
    fleet: Fleet,
    prefix: str,
    on_broker: dict[tuple[Kind, str], Retained],
    state: State,
    key: signing.SigningKey | None,
    *,
    prune: bool,
    now: datetime | None = None,
    accept_version_jump: bool = False,
) -> Plan:
    """Compare the file with the broker; assign versions to what changed.

    Raises VersionJumpError, listing every entry concerned, when a verified version on the
    broker is more than MAX_VERSION_JUMP beyond the publisher's own bound and
    accept_version_jump is false.
    """
    issued_at = utcnow_iso(now)
    floor = date_floor(now)
    changes: list[Change] = []
    jumps: list[str] = []
    wanted = _wanted(fleet, prefix)
    for kind, ident, topic, body in wanted:
        have = on_broker.get((kind, ident))
        old_version = have.version if have else None
        not_counted = have.trust_problem if have else None
        fields: list[str] = []
        if have is None:
            fields = ["new"]
        elif have.obj is None:
            fields = [f"broker copy invalid: {have.problem}"]
        else:
            fields = _differences(have.obj, body)
            want_signer = key.key_id if key else None
            if signer_of(have.obj) != want_signer:
                fields.append(f"signature {signer_of(have.obj)} -> {want_signer}")
            elif key is not None and not have.signature_ok:
                fields.append(f"broker copy {have.trust_problem or 'does not verify'}")
        if not fields:
            changes.append(Change(kind, ident, topic, "unchanged", old_version))
            continue
        own = max(state.get(prefix, kind, ident), floor)
        counted = have.counted_version if have else None
        if counted is not None and counted > own + MAX_VERSION_JUMP and not accept_version_jump:
            jumps.append(
                f"{kind} {ident}: the broker holds version {counted}, signed by "
                f"{have.verified_by if have else '?'}, more than {MAX_VERSION_JUMP:,} above "
                f"this publisher's own bound {own} (its record or today's date floor)"
            )
            continue
        version = max(counted or 0, own) + 1
        if version > MAX_VERSION:
            raise BuildError(f"{kind} {ident}: version would exceed {MAX_VERSION}")
        obj = {**body, "version": version, "issued_at": issued_at}
        if key is not None:
            obj = signing.sign(obj, key)
        payload = encode(obj)
        try:
            decode(ServerList if kind == "region" else Profile, payload, topic_id=ident)
        except Rejected as exc:
            raise BuildError(f"{kind} {ident}: built object is refused: {exc}") from None
        changes.append(
            Change(
                kind, ident, topic, "publish", old_version, version, fields, payload, not_counted
            )
        )
    if jumps:
        raise VersionJumpError(jumps)
    listed = {(kind, ident) for kind, ident, _, _ in wanted}
    for (kind, ident), have in sorted(on_broker.items()):
        if (kind, ident) in listed:
            continue
        topic = servers_topic(prefix, ident) if kind == "region" else profile_topic(prefix, ident)
        action = "withdraw" if prune else "keep-unlisted"
        changes.append(
            Change(kind, ident, topic, action, have.version, not_counted=have.trust_problem)
        )
    return Plan(changes)
