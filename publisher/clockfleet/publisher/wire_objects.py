"""The wire objects the publisher builds, and sealing them for the broker.

A region's `clock.servers/1` and an agent's `clock.profile/1` as the fleet file means them
(without version, issued_at and sig), what counts as their content, and `seal`: sign,
encode, and check the result with the strict decoder every reader uses, so nothing the
agents would refuse ever goes out. Every payload the publisher sends is sealed here: plain
publishes (`plan`), canaries and their endings (`canary`), replacements (`rollout_run`).
"""

from __future__ import annotations

from typing import Union

from clockfleet.protocol import signing
from clockfleet.protocol.codec import Rejected, decode, encode
from clockfleet.protocol.messages import PROFILE_SCHEMA, SERVERS_SCHEMA, Profile, ServerList
from clockfleet.publisher.fleetfile import AgentProfile, Region
from clockfleet.publisher.versions import Kind

# A decoded JSON value, and a JSON object as it is signed and sent.
JsonValue = Union[None, bool, int, float, str, list["JsonValue"], dict[str, "JsonValue"]]
WireObject = dict[str, JsonValue]

# `rollout` records how the last canary ended: a fact about the past, not content.
VOLATILE = ("version", "issued_at", "sig", "rollout")


def region_object(region: Region) -> WireObject:
    """A region's `clock.servers/1` object without version, issued_at and sig."""
    obj: WireObject = {"schema": SERVERS_SCHEMA, "region": region.id}
    if region.timezone is not None:
        obj["timezone"] = region.timezone
    if region.poll_interval_s is not None:
        obj["poll_interval_s"] = region.poll_interval_s
    if region.resync_jitter_s is not None:
        obj["resync_jitter_s"] = region.resync_jitter_s
    obj["servers"] = [{"host": s.host, "port": s.port} for s in region.servers]
    return obj


def profile_object(agent: AgentProfile) -> WireObject:
    """An agent's `clock.profile/1` object without version, issued_at and sig."""
    return {
        "schema": PROFILE_SCHEMA,
        "agent": agent.id,
        "region": agent.region,
        "timezone": agent.timezone,
    }


def content_of(obj: WireObject) -> WireObject:
    return {k: v for k, v in obj.items() if k not in VOLATILE}


def signer_of(obj: WireObject) -> str | None:
    sig = obj.get("sig")
    key_id = sig.get("key_id") if isinstance(sig, dict) else None
    return key_id if isinstance(key_id, str) else None


def server_pairs(servers: JsonValue) -> list[tuple[str, int]]:
    """A `servers` array this publisher built, as (host, port) pairs."""
    if not isinstance(servers, list):
        raise TypeError("servers is not an array")
    pairs = []
    for s in servers:
        host, port = (s.get("host"), s.get("port")) if isinstance(s, dict) else (None, None)
        if not isinstance(host, str) or not isinstance(port, int):
            raise TypeError(f"not a server: {s!r}")
        pairs.append((host, port))
    return pairs


def member(obj: WireObject, name: str) -> WireObject:
    """obj[name], an object: a canary of a list the strict decoder accepted."""
    value = obj[name]
    if not isinstance(value, dict):
        raise TypeError(f"{name} is not an object")
    return value


class BuildError(ValueError):
    """A built object the wire contract refuses: a bug or a gap in the file's validation."""


def seal(
    kind: Kind, ident: str, obj: WireObject, key: signing.SigningKey | None, what: str = "object"
) -> bytes:
    """Sign (with a key), encode, and check the payload with the strict decoder of its
    kind, as the agents will decode it; BuildError names the entry when it is refused."""
    if key is not None:
        obj = signing.sign(obj, key)
    payload = encode(obj)
    try:
        if kind == "region":
            decode(ServerList, payload, topic_id=ident)
        else:
            decode(Profile, payload, topic_id=ident)
    except Rejected as exc:
        raise BuildError(f"{kind} {ident}: built {what} is refused: {exc}") from None
    return payload
