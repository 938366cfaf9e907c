"""Canary rollouts: who is in a change's cohort, and which list content an agent applied.

One function each, shared by the agent (which list to probe), the publisher (who to wait
for, what to decide) and the collector (phase and cohort metrics: `region_status`, the same
function `clockfleet rollout status` prints), so the three always agree. A list tries one
change at a time: new servers (`canary`) or a new default time zone (`zone_canary`, judged
by zone_trial.py); `trial` is whichever it carries.
docs/rollout.md describes the whole mechanism.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Optional, Union

from clockfleet.protocol import zone_trial
from clockfleet.protocol.messages import Canary, Report, Server, ServerList, ZoneCanary

BUCKETS = 10_000  # percent with two decimals: 0.01 % is one bucket

# The change a list tries on a cohort first: its servers or its default zone.
Trial = Union[Canary, ZoneCanary]


def trial(sl: ServerList) -> Optional[Trial]:
    """The change `sl` is trying on a cohort, or None (the codec never lets both in)."""
    return sl.canary if sl.canary is not None else sl.zone_canary


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
    whichever program computes it. An NTS entry counts as (host, port, "nts", NTS-KE port),
    so that turning NTS on is a change, while a plain list's digest stays what it was."""
    return _digest(
        tuple(_entry(s) if isinstance(s, Server) else (str(s[0]), int(s[1])) for s in servers)
    )


def _entry(s: Server) -> tuple[Any, ...]:
    return (s.host, s.port, "nts", s.nts_ke_port or 4460) if s.nts else (s.host, s.port)


# Every report of every agent carries the digest of one of a few lists: compute each once.
@lru_cache(maxsize=256)
def _digest(pairs: tuple[tuple[Any, ...], ...]) -> str:
    text = json.dumps([list(p) for p in pairs], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def servers_for(sl: ServerList, agent_id: str) -> tuple[list[Server], Optional[str]]:
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
    list's fault). A zone change is judged by its zone alone (zone_trial.verdict)."""
    if sl.zone_canary is not None and report is not None:
        return zone_trial.verdict(sl.zone_canary, report)
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


@dataclass
class Health:
    """The cohort's reports for one canary list, as the decision reads them."""

    cohort: list[str] = field(default_factory=list)  # known agents of the region in the cohort
    ok: list[str] = field(default_factory=list)
    failing: dict[str, str] = field(default_factory=dict)  # agent -> why
    region_agents: int = 0
    # Agents whose reports name the region but whom the centre does not place in it: shown
    # apart, never in the decision.
    unplaced: list[str] = field(default_factory=list)

    @property
    def reported(self) -> int:
        return len(self.ok) + len(self.failing)


def health(
    sl: ServerList,
    reports: dict[str, Report],
    baselines: dict[str, Optional[float]],
    placed: Optional[Mapping[str, str]] = None,
    followers: Optional[AbstractSet[str]] = None,
) -> Health:
    """Judge every known agent of the region that is in the canary's cohort.

    `placed`: agent -> region as the centre knows it independently of the reports (the
    fleet file's profiles). A report's own `region` is the agent's word, and any agent may
    write what it likes into its report: with `placed` given, only agents placed in the
    region count, and the others that claim it are listed in `unplaced`. Without it (a
    reader with no fleet file: the collector's display) the reports' word is taken.

    `followers`, for a zone change: the region's agents whose zone is the region's default
    (the fleet file's profiles without a zone of their own); only they are in its cohort.
    Without it, an agent follows when the zone it reports asked for is the old or the new
    one (zone_trial.follows)."""
    tried = trial(sl)
    assert tried is not None
    h = Health()
    for agent, report in sorted(reports.items()):
        if placed is not None:
            if placed.get(agent) != sl.region:
                if report.region == sl.region:
                    h.unplaced.append(agent)
                continue
        elif report.region != sl.region:
            continue
        h.region_agents += 1
        if not in_cohort(tried.id, agent, tried.percent):
            continue
        if sl.zone_canary is not None and not zone_trial.follows(
            sl.zone_canary, sl.timezone, agent, report, followers
        ):
            continue
        h.cohort.append(agent)
        verdict = cohort_verdict(sl, report, baselines.get(agent))
        if verdict == "ok":
            h.ok.append(agent)
        elif verdict is not None:
            h.failing[agent] = verdict
    return h


def issued(sl: ServerList) -> float:
    return sl.issued_at.timestamp()


def time_left(sl: ServerList, now: float) -> float:
    tried = trial(sl)
    assert tried is not None
    return max(0.0, issued(sl) + tried.bake_s - now)


PHASES = ("none", "canary", "baking", "promoted", "aborted")


def region_status(
    sl: ServerList,
    reports: dict[str, Report],
    baselines: dict[str, Optional[float]],
    now: float,
    placed: Optional[Mapping[str, str]] = None,
    followers: Optional[AbstractSet[str]] = None,
) -> dict[str, Any]:
    """One region's rollout as `clockfleet rollout status` shows it and the collector exports
    it: phase (one of PHASES: "canary" while cohort reports are pending, "baking" once all
    reported), change, cohort size, ok / failing / pending, time left and overdue (seconds
    past the bake time without a decision), and the reason (failures, or how it ended)."""
    tried = trial(sl)
    if tried is not None:
        h = health(sl, reports, baselines, placed, followers)
        return {
            "phase": "canary" if h.reported < len(h.cohort) else "baking",
            "change": tried.id,
            "percent": tried.percent,
            **({"timezone": tried.timezone} if isinstance(tried, ZoneCanary) else {}),
            "cohort": len(h.cohort),
            "ok": len(h.ok),
            "failing": len(h.failing),
            "pending": len(h.cohort) - h.reported,
            "time_left_s": round(time_left(sl, now), 1),
            "overdue_s": round(max(0.0, now - issued(sl) - tried.bake_s), 1),
            "reason": "; ".join(f"{a}: {why}" for a, why in sorted(h.failing.items()))[:200],
            "unplaced": len(h.unplaced),
        }
    if sl.rollout is not None:
        r = sl.rollout
        return {
            "phase": r.phase,
            "change": r.id,
            "cohort": r.cohort,
            "ok": r.reported - r.failing,
            "failing": r.failing,
            "pending": r.cohort - r.reported,
            "time_left_s": 0.0,
            "reason": f"{r.reason} ({r.by})",
        }
    return {"phase": "none", "cohort": 0, "ok": 0, "failing": 0, "pending": 0, "time_left_s": 0.0}
