"""Which broker copies count: the retained region lists and profiles, judged.

A copy's version bounds the next one (`versions`) only when its signature verifies with a
key this publisher holds: its signing key, or a retired one given with --trust-key. Anyone
who can write one retained message could otherwise push the version to 2^53-1, after which
no later list is newer and every agent refuses them all. An unverified copy is reported and
replaced by the next publish; an undecodable one is always republished.

A copy that verifies may still be a replay: anyone who can write to the broker can put back
any message ever published (any agent may read every region list, so any agent may have
recorded them). The publisher's own record (`issued_record`) is the authority: a copy older
than the version it issued, or at that version but not the payload it issued, is stale,
reported, never acted on (no canary continued, promoted or aborted from it), and replaced
by the next publish.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from clockfleet.protocol import signing
from clockfleet.protocol.codec import Rejected, decode, parse_json_object
from clockfleet.protocol.messages import MAX_VERSION, Profile, ServerList
from clockfleet.protocol.topics import TopicError, parse_topic
from clockfleet.publisher.issued_record import IssuedRecord
from clockfleet.publisher.versions import Kind
from clockfleet.publisher.wire_objects import JsonValue, WireObject

log = logging.getLogger("clockfleet.publisher")


def on_broker(
    prefix: str,
    retained: dict[str, bytes],
    trust: signing.TrustStore | None,
    record: IssuedRecord | None = None,
) -> OnBroker:
    """(kind, id) -> the judged copy, for every retained topic; problems are logged."""
    out: OnBroker = {}
    for topic, payload in retained.items():
        if not payload:
            continue  # an empty retained payload is a withdrawal, not an entry
        try:
            ref = parse_topic(prefix, topic)
        except TopicError as exc:
            log.warning("ignoring retained message: %s", exc)
            continue
        kind: Kind = "region" if ref.kind == "servers" else "profile"
        have = judge_copy(kind, ref.ident, payload, trust)
        if record is not None and have.version is not None:
            have.stale = record.staleness(prefix, kind, ref.ident, have.version, payload)
        if have.stale:
            log.warning(
                "%s %s on the broker is stale (%s): it will be replaced",
                kind,
                ref.ident,
                have.stale,
            )
        if have.problem:
            log.warning("%s %s on the broker is invalid (%s)", kind, ref.ident, have.problem)
        if have.trust_problem and have.version is not None:
            log.warning(
                "%s %s on the broker: version %d is not counted (%s; only copies signed with "
                "a key this publisher holds count)",
                kind,
                ref.ident,
                have.version,
                have.trust_problem,
            )
        out[(kind, ref.ident)] = have
    return out


@dataclass
class BrokerCopy:
    """One retained region list or profile as the broker holds it, decoded strictly."""

    version: int | None  # as the payload states it; None when there is no plausible one
    obj: WireObject | None  # None when the payload does not decode
    problem: str | None = None  # why it does not decode (then it is always republished)
    verified_by: str | None = None  # the key id whose signature verifies, if any
    # Why its version does not count, when the publisher holds keys and it fails them.
    trust_problem: str | None = None
    # Why it is not what this publisher issued last (a replay), by its own record.
    stale: str | None = None

    @property
    def signature_ok(self) -> bool:
        return self.verified_by is not None

    def trusted(self, signing_key_held: bool) -> bool:
        """May the publisher act on this copy (continue or end a canary from it)? It is the
        copy it issued last, and verifies when the publisher signs."""
        return (
            self.obj is not None
            and self.stale is None
            and (self.signature_ok or not signing_key_held)
        )

    @property
    def counted_version(self) -> int | None:
        """The version that bounds the next one: only a verified copy's."""
        return self.version if self.verified_by is not None else None


# Every judged copy on the broker, by entry.
OnBroker = dict[tuple[Kind, str], BrokerCopy]


def judge_copy(
    kind: Kind, ident: str, payload: bytes, trust: signing.TrustStore | None
) -> BrokerCopy:
    """One retained payload decoded strictly, its version, and whether that version counts."""
    try:
        version, obj = _decode(kind, ident, payload)
    except Rejected as exc:
        problem = f"{exc.reason}: {exc.detail}"
        # A copy agents refuse today may still be one we signed and some agent applied
        # (an older agent, a looser decoder): its version counts if, and only if, it is ours.
        raw = _raw_object(payload)
        # Another entry's signed copy replayed on this topic verifies too, but is not this one.
        if raw is not None and raw.get("region" if kind == "region" else "agent") != ident:
            raw = None
        stated = _plausible_version(raw.get("version")) if raw is not None else None
        verified_by, trust_problem = _verify(raw, trust) if stated is not None else (None, None)
        return BrokerCopy(stated, None, problem, verified_by, trust_problem)
    verified_by, trust_problem = _verify(obj, trust)
    return BrokerCopy(version, obj, None, verified_by, trust_problem)


def _decode(kind: Kind, ident: str, payload: bytes) -> tuple[int, WireObject]:
    """The payload's version and object, decoded as every reader decodes its kind."""
    if kind == "region":
        servers, obj = decode(ServerList, payload, topic_id=ident)
        return servers.version, obj
    profile, obj = decode(Profile, payload, topic_id=ident)
    return profile.version, obj


def _verify(
    obj: WireObject | None, trust: signing.TrustStore | None
) -> tuple[str | None, str | None]:
    """(key id, None) when obj verifies with a held key, else (None, why not)."""
    if not trust or obj is None:
        return None, None
    try:
        return signing.verify(obj, trust), None
    except Rejected as exc:
        return None, exc.detail if exc.reason != "unsigned" else "unsigned"


def _raw_object(payload: bytes) -> WireObject | None:
    try:
        return parse_json_object(payload)
    except Rejected:
        return None


def _plausible_version(version: JsonValue) -> int | None:
    if isinstance(version, int) and not isinstance(version, bool) and 0 <= version <= MAX_VERSION:
        return version
    return None
