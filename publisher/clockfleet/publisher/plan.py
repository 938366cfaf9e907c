"""The diff: what a fleet file means on the wire, compared with what the broker holds.

Content is everything but `version`, `issued_at` and `sig`; an entry whose content (and
signing key) matches the broker's copy is left alone. A changed entry gets its version by
the rule in `versions`, from the copies `broker_copies` judged; an entry the broker holds
but the file no longer has is withdrawn with --prune and otherwise left in place and listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from clockfleet.protocol import signing
from clockfleet.protocol.codec import utcnow_iso
from clockfleet.protocol.topics import profile_topic, servers_topic
from clockfleet.publisher.broker_copies import BrokerCopy, OnBroker
from clockfleet.publisher.fleetfile import Fleet
from clockfleet.publisher.issued_record import IssuedRecord
from clockfleet.publisher.versions import (
    MAX_VERSION_JUMP,
    Kind,
    VersionJump,
    VersionSpaceEnd,
    date_floor,
    next_version,
)
from clockfleet.publisher.wire_objects import (
    BuildError,
    WireObject,
    content_of,
    profile_object,
    region_object,
    seal,
    signer_of,
)

Action = Literal["publish", "withdraw", "keep-unlisted", "unchanged"]


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


class VersionJumpError(ValueError):
    """Verified versions on the broker too far ahead to adopt without the operator's word."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def make_plan(
    fleet: Fleet,
    prefix: str,
    on_broker: OnBroker,
    record: IssuedRecord,
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
        fields = _what_differs(have, body, key)
        if not fields:
            changes.append(Change(kind, ident, topic, "unchanged", old_version))
            continue
        try:
            version = next_version(
                have.counted_version if have else None,
                record.last_version(prefix, kind, ident),
                floor,
                accept_jump=accept_version_jump,
            )
        except VersionJump as jump:
            jumps.append(_jump_line(kind, ident, jump, have))
            continue
        except VersionSpaceEnd as exc:
            raise BuildError(f"{kind} {ident}: {exc}") from None
        payload = seal(kind, ident, {**body, "version": version, "issued_at": issued_at}, key)
        not_counted = have.trust_problem if have else None
        changes.append(
            Change(
                kind, ident, topic, "publish", old_version, version, fields, payload, not_counted
            )
        )
    if jumps:
        raise VersionJumpError(jumps)
    listed = {(kind, ident) for kind, ident, _, _ in wanted}
    return Plan(changes + _unlisted(on_broker, listed, prefix, prune))


def _wanted(fleet: Fleet, prefix: str) -> list[tuple[Kind, str, str, WireObject]]:
    out: list[tuple[Kind, str, str, WireObject]] = []
    for rid in sorted(fleet.regions):
        out.append(("region", rid, servers_topic(prefix, rid), region_object(fleet.regions[rid])))
    for aid in sorted(fleet.agents):
        out.append(("profile", aid, profile_topic(prefix, aid), profile_object(fleet.agents[aid])))
    return out


def _what_differs(
    have: BrokerCopy | None, body: WireObject, key: signing.SigningKey | None
) -> list[str]:
    """Why the entry must be published, for the operator; empty when it is unchanged."""
    if have is None:
        return ["new"]
    if have.obj is None:
        return [f"broker copy invalid: {have.problem}"]
    keys = sorted(set(content_of(have.obj)) | set(content_of(body)))
    fields = [k for k in keys if have.obj.get(k) != body.get(k)]
    want_signer = key.key_id if key else None
    if signer_of(have.obj) != want_signer:
        fields.append(f"signature {signer_of(have.obj)} -> {want_signer}")
    elif key is not None and not have.signature_ok:
        fields.append(f"broker copy {have.trust_problem or 'does not verify'}")
    if have.stale and not fields:
        # The same content, but a replay of an older copy: a fresh agent must never find it
        # on the broker to follow.
        fields.append(f"broker copy stale: {have.stale}")
    return fields


def _jump_line(kind: Kind, ident: str, jump: VersionJump, have: BrokerCopy | None) -> str:
    return (
        f"{kind} {ident}: the broker holds version {jump.counted}, signed by "
        f"{have.verified_by if have else '?'}, more than {MAX_VERSION_JUMP:,} above "
        f"this publisher's own bound {jump.own} (its record or today's date floor)"
    )


def _unlisted(
    on_broker: OnBroker, listed: set[tuple[Kind, str]], prefix: str, prune: bool
) -> list[Change]:
    """The entries the broker holds and the file does not: withdrawn with --prune, else
    left in place and listed."""
    action: Action = "withdraw" if prune else "keep-unlisted"
    out: list[Change] = []
    for (kind, ident), have in sorted(on_broker.items()):
        if (kind, ident) in listed:
            continue
        topic = servers_topic(prefix, ident) if kind == "region" else profile_topic(prefix, ident)
        out.append(Change(kind, ident, topic, action, have.version, not_counted=have.trust_problem))
    return out
