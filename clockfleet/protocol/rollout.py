"""Canary rollouts: who is in a change's cohort, and which list content an agent applied.

One function each, shared by the agent (which list to probe), the publisher (who to wait
for, what to decide) and the collector (cohort labels), so the three always agree.
docs/rollout.md describes the whole mechanism.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Optional

from clockfleet.protocol.messages import Server, ServerList

BUCKETS = 10_000  # percent with two decimals: 0.01 % is one bucket


def cohort_bucket(change_id: str, agent_id: str) -> int:
    """The agent's place (0..9999) for this change: stable across reconnects and restarts,
    independent between changes (a new change id draws a new cohort)."""
    digest = hashlib.sha256(f"{change_id}/{agent_id}".encode()).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def in_cohort(change_id: str, agent_id: str, percent: float) -> bool:
    """Is `agent_id` among the `percent` % of agents that try change `change_id` first?"""
    return cohort_bucket(change_id, agent_id) < round(percent * 100)


def list_digest(servers: Sequence[Any]) -> str:
    """A short hash of a server list's content (hosts and ports, in order): 16 hex digits.

    Accepts `Server` structs or (host, port) pairs; the same content gives the same digest
    whichever program computes it."""
    return _digest(
        tuple(
            (s.host, s.port) if isinstance(s, Server) else (str(s[0]), int(s[1])) for s in servers
        )
    )


# Every report of every agent carries the digest of one of a few lists: compute each once.
@lru_cache(maxsize=256)
def _digest(pairs: tuple[tuple[str, int], ...]) -> str:
    text = json.dumps([list(p) for p in pairs], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def servers_for(sl: ServerList, agent_id: str) -> tuple[list, Optional[str]]:
    """The servers `agent_id` probes from list `sl`, and its side of a canary.

    Without a canary: the list's servers and None. With one: the canary's servers and
    "canary" for an agent in the cohort, the list's own servers and "rest" otherwise."""
    canary = sl.canary
    if canary is None:
        return list(sl.servers), None
    if in_cohort(canary.id, agent_id, canary.percent):
        return list(canary.servers), "canary"
    return list(sl.servers), "rest"


def cohort_verdict(
    sl: ServerList, report: Any, baseline_offset_s: Optional[float] = None
) -> Optional[str]:
    """How one cohort agent's report judges the canary of list `sl`: None when the report is
    not about this change yet (an older list, the rest's side), "ok", or why it fails.

    A cohort report fails when the sync was not good, when the new first server was not
    `ok`, or when the offset jumped beyond the canary's tolerance (compared with the agent's
    offset before the change, when known: a host that was far off before is not the new
    list's fault)."""
    canary = sl.canary
    if canary is None or report is None:
        return None
    if report.list_version < sl.version or report.change != canary.id:
        return None
    if report.cohort != "canary" or report.list_digest != list_digest(canary.servers):
        return None
    if not report.ok:
        return "no good sync"
    first = canary.servers[0]
    head = report.tried[0] if report.tried else None
    if head is None or (head.host, head.port) != (first.host, first.port) or head.outcome != "ok":
        outcome = head.outcome if head is not None else "absent"
        return f"new first server {first.host}:{first.port} {outcome}"
    offset = report.offset_s or 0.0
    before = baseline_offset_s if baseline_offset_s is not None else 0.0
    if abs(offset - before) > canary.offset_tolerance_s:
        return f"offset jumped {offset - before:+.3f} s"
    return "ok"
