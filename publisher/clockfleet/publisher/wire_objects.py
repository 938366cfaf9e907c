"""The wire objects the publisher builds, and sealing them for the broker.

A region's `clock.servers/1` (`/2` when it names an NTS server) and an agent's
`clock.profile/1` as the fleet file means them (without version, issued_at and sig), what
counts as their content, and `seal`: sign, encode, and check the result with the strict
decoder every reader uses, so nothing the agents would refuse ever goes out. Every payload
the publisher sends is sealed here: plain publishes (`plan`), canaries and their endings
(`canary`), replacements (`rollout_run`).
"""

from __future__ import annotations

from typing import Union

from clockfleet.protocol import signing
from clockfleet.protocol.codec import Rejected, decode, encode
from clockfleet.protocol.messages import (
    PROFILE_SCHEMA,
    SERVERS_NTS_SCHEMA,
    SERVERS_SCHEMA,
    Profile,
    ServerList,
)
from clockfleet.publisher.fleetfile import AgentProfile, Region, ServerEntry
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
    obj["servers"] = [_server(s) for s in region.servers]
    return with_servers_schema(obj)


def _server(s: ServerEntry) -> WireObject:
    out: WireObject = {"host": s.host, "port": s.port}
    if s.nts:
        out["nts"] = True
        if s.nts_ke_port is not None:
            out["nts_ke_port"] = s.nts_ke_port
    return out


def with_servers_schema(obj: WireObject) -> WireObject:
    """The list with the schema its servers need: clock.servers/2 when any entry (of the
    list or of its canary) is an NTS server, so that an agent that predates NTS refuses it
    rather than ask that server in plain NTP; clock.servers/1 otherwise, as before."""
    entries = list(obj.get("servers") or [])  # type: ignore[arg-type]
    canary = obj.get("canary")
    if isinstance(canary, dict):
        entries += list(canary.get("servers") or [])  # type: ignore[arg-type]
    nts = any(isinstance(e, dict) and e.get("nts") is True for e in entries)
    return {**obj, "schema": SERVERS_NTS_SCHEMA if nts else SERVERS_SCHEMA}


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
    if kind == "region":  # a canary or its ending may add or drop the NTS servers
        obj = with_servers_schema(obj)
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
