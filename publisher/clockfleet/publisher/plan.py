"""The diff: what a fleet file means on the wire, compared with what the broker holds.

Content is everything but `version`, `issued_at` and `sig`; an entry whose content (and
signing key) matches the broker's copy is left alone. A changed entry gets its version by
the rule in `versions`, from the copies `broker_copies` judged; an entry the broker holds
but the file no longer has is withdrawn with --prune and otherwise left in place and listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from clockfleet.protocol import signing
from clockfleet.protocol.codec import Rejected, decode, encode, utcnow_iso
from clockfleet.protocol.messages import PROFILE_SCHEMA, SERVERS_SCHEMA, Profile, ServerList
from clockfleet.protocol.topics import profile_topic, servers_topic
from clockfleet.publisher.broker_copies import Retained
from clockfleet.publisher.fleetfile import AgentProfile, Fleet, Region
from clockfleet.publisher.state import State
from clockfleet.publisher.versions import (
    MAX_VERSION_JUMP,
    Kind,
    VersionJump,
    VersionSpaceEnd,
    date_floor,
    next_version,
)

# `rollout` records how the last canary ended: a fact about the past, not content.
VOLATILE = ("version", "issued_at", "sig", "rollout")
Action = Literal["publish", "withdraw", "keep-unlisted", "unchanged"]


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


@dataclass
class Change:
    kind: Kind
    ident: str
    topic: str
    action: Action
    old_version: int | None
    new_version: int | None = None
    fields: list[str] = field(default_factory=list)  # what differs, for the operator
    payload: bytes = b""
    not_counted: str | None = None  # why the broker's version was not counted


@dataclass
class Plan:
    changes: list[Change]

    def of(self, action: Action) -> list[Change]:
        return [c for c in self.changes if c.action == action]


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
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
    accept_version_jump is false; BuildError when a built object would be refused.
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
            if have.stale and not fields:
                # The same content, but a replay of an older copy: a fresh agent must never
                # find it on the broker to follow.
                fields.append(f"broker copy stale: {have.stale}")
        if not fields:
            changes.append(Change(kind, ident, topic, "unchanged", old_version))
            continue
        counted = have.counted_version if have else None
        try:
            version = next_version(
                counted,
                state.get(prefix, kind, ident),
                floor,
                accept_jump=accept_version_jump,
            )
        except VersionJump as jump:
            jumps.append(
                f"{kind} {ident}: the broker holds version {jump.counted}, signed by "
                f"{have.verified_by if have else '?'}, more than {MAX_VERSION_JUMP:,} above "
                f"this publisher's own bound {jump.own} (its record or today's date floor)"
            )
            continue
        except VersionSpaceEnd as exc:
            raise BuildError(f"{kind} {ident}: {exc}") from None
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
