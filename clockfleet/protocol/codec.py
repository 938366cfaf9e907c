"""Strict decoding and canonical encoding of wire messages.

A payload is accepted only when all of it is valid; nothing is clamped, repaired or
partly applied. Every refusal carries a short machine-readable `reason` (a metric label)
and a human-readable `detail` (a log line).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import msgspec

from clockfleet.protocol.ids import host_problem, timezone_problem
from clockfleet.protocol.messages import (
    SERVER_ENTRY_KEYS,
    SERVERS_NTS_SCHEMA,
    Command,
    Profile,
    Report,
    ServerList,
    Status,
)

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_FUTURE = timedelta(days=1)

# Every reason a reader may count a rejected payload under. Metrics pre-create these.
REJECT_REASONS = (
    "oversized",
    "not-utf8",
    "malformed-json",
    "duplicate-key",
    "not-a-number",
    "not-an-object",
    "wrong-schema",
    "invalid-field",
    "id-mismatch",
    "bad-host",
    "bad-timezone",
    "future-timestamp",
    "unsigned",
    "bad-signature",
    "unknown-key",
    "replay",
    "bad-topic",
    "undecodable",
)

T = TypeVar("T", ServerList, Profile, Status, Report, Command)

SCHEMA_OF: dict[type, str] = {
    ServerList: "clock.servers/1",  # or clock.servers/2 (SERVERS_NTS_SCHEMA), for NTS
    Profile: "clock.profile/1",
    Status: "clock.status/1",
    Report: "clock.report/1",
    Command: "clock.cmd/1",
}


class Rejected(ValueError):
    """A payload that must not be applied; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise Rejected("duplicate-key", f"duplicate key {dup!r}")
    return obj


def _no_constant(name: str) -> Any:
    raise Rejected("not-a-number", f"{name} is not a JSON number")


def parse_json_object(payload: bytes) -> dict[str, Any]:
    """Bytes -> JSON object, refusing what the contract refuses before any typing.

    Fast path: msgspec's C decoder, plus a duplicate-key test that compares the number of
    key terminators in the raw text (an upper bound on the keys it holds) with the number
    of keys that survived decoding. Anything the fast path cannot vouch for (a decode error,
    a '":' inside a string value, a real duplicate) goes through the slow path, which names
    the exact reason.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Rejected("oversized", f"{len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        obj = _decode_any(payload)
    except RecursionError:
        # A few KB of '[[[[...' is enough; no contract message nests more than four deep.
        raise Rejected("malformed-json", "nested too deeply") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        return _parse_slowly(payload)
    if not isinstance(obj, dict):
        raise Rejected("not-an-object", f"payload is a JSON {type(obj).__name__}, not an object")
    if _has_spaced_string_end(payload) or payload.count(b'":') != _count_keys(obj):
        return _parse_slowly(payload)
    return obj


_decode_any = msgspec.json.Decoder().decode
# A quote inside a JSON string is always escaped, so in compact JSON every key ends in
# '":' and only a value containing '\\":' can add to the count: the count is an upper
# bound on the keys in the text. Equal to the keys that survived decoding means no key
# was repeated. Whitespace between a string and what follows it (pretty-printed JSON)
# takes the slow path, which checks exactly.


def _has_spaced_string_end(payload: bytes) -> bool:
    return b'" ' in payload or b'"\n' in payload or b'"\t' in payload or b'"\r' in payload


def _count_keys(root: dict[str, Any]) -> int:
    count = 0
    stack: list[Any] = [root]  # dicts and lists, walked without recursion
    while stack:
        node = stack.pop()
        values = node.values() if type(node) is dict else node
        if type(node) is dict:
            count += len(node)
        for v in values:
            t = type(v)
            if t is dict or t is list:
                stack.append(v)
    return count


def _parse_slowly(payload: bytes) -> dict[str, Any]:
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected("not-utf8", str(exc)) from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise Rejected("malformed-json", str(exc)) from None
    except RecursionError:
        raise Rejected("malformed-json", "nested too deeply") from None
    if not isinstance(obj, dict):
        raise Rejected("not-an-object", f"payload is a JSON {type(obj).__name__}, not an object")
    return obj


def decode(
    cls: type[T],
    payload: Any,
    *,
    topic_id: str | None = None,
    now: datetime | None = None,
    check_future: bool = True,
) -> tuple[T, dict[str, Any]]:
    """Decode `payload` as `cls`; return the message and the raw object (for signatures).

    Any byte string gives a message or a `Rejected`: nothing else escapes, so no payload can
    end a reader's loop (an unexpected error is refused as `undecodable`).

    `topic_id` is the id the topic names: the payload's own id must equal it, so a valid,
    signed list for region A republished on region B's topic is refused.

    Only a report's `at` is judged against a clock (`now`, default this host's): it is
    written from the agent's corrected clock, and a reader's own clock is synced. Lists,
    profiles, status and commands never are: the host reading them may be years off, which
    is the job (lists are ordered by version and authenticated by signature). An agent
    reading its own reports back passes check_future=False for the same reason.
    """
    try:
        return _decode(cls, payload, topic_id, now, check_future)
    except Rejected:
        raise
    except RecursionError:
        raise Rejected("malformed-json", "nested too deeply") from None
    except Exception as exc:  # a decoder bug must be a refusal, never a dead reader
        raise Rejected("undecodable", f"{type(exc).__name__}: {exc}"[:200]) from None


def _decode(
    cls: type[T],
    payload: Any,
    topic_id: str | None,
    now: datetime | None,
    check_future: bool,
) -> tuple[T, dict[str, Any]]:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise Rejected("undecodable", f"payload is {type(payload).__name__}, not bytes")
    obj = parse_json_object(bytes(payload))
    want = SCHEMA_OF[cls]
    schema = obj.get("schema")
    if schema != want and not (cls is ServerList and schema == SERVERS_NTS_SCHEMA):
        raise Rejected("wrong-schema", f"schema {schema!r}, expected {want!r}")
    try:
        msg = msgspec.convert(obj, cls, strict=True)
    except msgspec.ValidationError as exc:
        raise Rejected("invalid-field", str(exc)) from None
    _check_semantics(msg, topic_id)
    if isinstance(msg, ServerList):
        _check_nts(msg, obj)
    if check_future and isinstance(msg, Report):
        limit = (now or datetime.now(timezone.utc)) + MAX_FUTURE
        if msg.at > limit:
            raise Rejected("future-timestamp", f"{msg.at.isoformat()} is more than a day ahead")
    return msg, obj


def _check_semantics(msg: Any, topic_id: str | None) -> None:
    if topic_id is not None:
        own = msg.region if isinstance(msg, ServerList) else getattr(msg, "agent", topic_id)
        if own != topic_id:
            raise Rejected("id-mismatch", f"payload names {own!r}, topic names {topic_id!r}")
    if isinstance(msg, ServerList):
        _check_servers(msg.servers, "server")
        if msg.canary is not None:
            _check_servers(msg.canary.servers, "canary server")
            if msg.canary.servers == msg.servers:
                raise Rejected("invalid-field", "canary servers equal the list's servers")
        _check_zone_canary(msg)
    elif isinstance(msg, Report):
        for t in msg.tried:
            if (problem := host_problem(t.host)) is not None:
                raise Rejected("bad-host", problem)
        if msg.server is not None and (problem := host_problem(msg.server.host)):
            raise Rejected("bad-host", problem)
        if msg.ok and (msg.server is None or msg.offset_s is None or msg.delay_s is None):
            raise Rejected("invalid-field", "ok report without server, offset_s and delay_s")
        if not msg.ok and msg.server is not None:
            raise Rejected("invalid-field", "failed report names a server")
    for tz in (getattr(msg, "timezone", None), getattr(msg, "timezone_expected", None)):
        if tz is not None and (problem := timezone_problem(tz)) is not None:
            raise Rejected("bad-timezone", problem)


def _check_zone_canary(msg: ServerList) -> None:
    zc = msg.zone_canary
    if zc is None:
        return
    if msg.canary is not None:
        raise Rejected("invalid-field", "a canary and a zone_canary in one list")
    if (problem := timezone_problem(zc.timezone)) is not None:
        raise Rejected("bad-timezone", problem)
    if zc.timezone == msg.timezone:
        raise Rejected("invalid-field", "zone_canary's timezone equals the list's")


def _check_servers(servers: Any, what: str) -> None:
    seen = set()
    for s in servers:
        if (problem := host_problem(s.host)) is not None:
            raise Rejected("bad-host", problem)
        if (s.host, s.port) in seen:
            raise Rejected("invalid-field", f"{what} {s.host}:{s.port} listed twice")
        seen.add((s.host, s.port))


def _check_nts(msg: ServerList, obj: dict[str, Any]) -> None:
    """NTS entries only in clock.servers/2 (an agent that predates it refuses the list, and
    never asks an NTS server in plain NTP); in /2, an entry holds only the keys this reader
    knows: an entry says how to reach a time source, and a field it does not know could
    change what a safe use of it is (docs/protocol.md)."""
    entries = list(msg.servers) + (list(msg.canary.servers) if msg.canary else [])
    for s in entries:
        if s.nts_ke_port is not None and not s.nts:
            raise Rejected("invalid-field", f"server {s.host}: nts_ke_port without nts")
    if msg.schema != SERVERS_NTS_SCHEMA:
        if any(s.nts for s in entries):
            raise Rejected(
                "invalid-field",
                f"an NTS server in a {msg.schema} list (NTS needs {SERVERS_NTS_SCHEMA})",
            )
        return
    raw = list(obj.get("servers") or [])
    canary = obj.get("canary")
    if isinstance(canary, dict):
        raw += list(canary.get("servers") or [])
    for entry in raw:
        unknown = sorted(set(entry) - set(SERVER_ENTRY_KEYS)) if isinstance(entry, dict) else []
        if unknown:
            raise Rejected("invalid-field", f"server entry field {unknown[0]!r} is not known here")


def encode(msg: Any) -> bytes:
    """The compact JSON a message goes on the wire as (None fields left out)."""
    return msgspec.json.encode(msg)


def to_object(msg: Any) -> dict[str, Any]:
    obj: dict[str, Any] = msgspec.to_builtins(msg)
    return obj


def canonical_bytes(obj: dict[str, Any]) -> bytes:
    """The signed form: the object without `sig`, sorted keys, no spaces, raw UTF-8."""
    body = {k: v for k, v in obj.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def utcnow_iso(now: datetime | None = None) -> str:
    """RFC 3339 UTC with milliseconds, as the contract's examples write time."""
    t = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
