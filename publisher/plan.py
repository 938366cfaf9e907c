"""What to publish: the wire objects a fleet file means, compared with what the broker holds.

Content is everything but `version`, `issued_at` and `sig`; an entry whose content (and
signing key) matches the broker's copy is left alone. A changed entry gets
version = max(version on the broker, the publisher's own record, a date floor YYYYMMDD00) + 1:
the broker can lose its retained state (Mosquitto autosaves every 30 minutes by default) and
agents refuse any version not newer than the one they applied, so versions never go back.
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

    version: int | None  # None when the payload does not decode
    obj: dict[str, Any] | None
    problem: str | None = None  # why it does not decode (then it is always republished)
    signature_ok: bool = False  # verifies with the publisher's own key


def read_retained(
    kind: Kind, ident: str, payload: bytes, trust: signing.TrustStore | None
) -> Retained:
    cls = ServerList if kind == "region" else Profile
    try:
        msg, obj = decode(cls, payload, topic_id=ident)
    except Rejected as exc:
        return Retained(_raw_version(payload), None, f"{exc.reason}: {exc.detail}")
    ok = False
    if trust:
        try:
            signing.verify(obj, trust)
            ok = True
        except Rejected:
            ok = False
    return Retained(msg.version, obj, None, ok)


def _raw_version(payload: bytes) -> int | None:
    """The version field of a payload that does not decode, when it is a plausible one.

    Agents refuse such a payload today, but one refused for a time-dependent reason (a
    timestamp ahead of the clock) may have been applied somewhere: never issue below it.
    """
    try:
        version = parse_json_object(payload).get("version")
    except Rejected:
        return None
    if isinstance(version, int) and not isinstance(version, bool) and 0 <= version < MAX_VERSION:
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

    def describe(self) -> str:
        """One line for the operator: what it is, and what happens (or happened) to it."""
        name = f"{self.kind} {self.ident}"
        old = "absent" if self.old_version is None else str(self.old_version)
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


def make_plan(
    fleet: Fleet,
    prefix: str,
    on_broker: dict[tuple[Kind, str], Retained],
    state: State,
    key: signing.SigningKey | None,
    *,
    prune: bool,
    now: datetime | None = None,
) -> Plan:
    """Compare the file with the broker; assign versions to what changed."""
    issued_at = utcnow_iso(now)
    floor = date_floor(now)
    changes: list[Change] = []
    wanted = _wanted(fleet, prefix)
    for kind, ident, topic, body in wanted:
        have = on_broker.get((kind, ident))
        old_version = have.version if have else None
        fields: list[str] = []
        if have is None:
            fields = ["new"]
        elif have.obj is None:
            fields = [f"broker copy invalid: {have.problem}"]
        else:
            fields = _differences(have.obj, body)
            want_signer = key.key_id if key else None
            if signer_of(have.obj) != want_signer or (key is not None and not have.signature_ok):
                fields.append(f"signature {signer_of(have.obj)} -> {want_signer}")
        if not fields:
            changes.append(Change(kind, ident, topic, "unchanged", old_version))
            continue
        version = max(old_version or 0, state.get(prefix, kind, ident), floor) + 1
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
        changes.append(Change(kind, ident, topic, "publish", old_version, version, fields, payload))
    listed = {(kind, ident) for kind, ident, _, _ in wanted}
    for (kind, ident), have in sorted(on_broker.items()):
        if (kind, ident) in listed:
            continue
        topic = servers_topic(prefix, ident) if kind == "region" else profile_topic(prefix, ident)
        action = "withdraw" if prune else "keep-unlisted"
        changes.append(Change(kind, ident, topic, action, have.version))
    return Plan(changes)
