"""The publisher's canary policy, the pure part: the policy, the canary list, the decision.

A changed region list goes out as a canary (version v+1): the list's `servers` stay the
current ones and a signed `canary` carries the new ones, which only the cohort applies
(`clockfleet.protocol.rollout.in_cohort`). After the bake time the region is promoted
(v+2: the new servers, no canary) when the cohort's reports are healthy, or aborted (v+2:
the previous servers, no canary) when too many cohort agents fail or too few reported.
Both carry a `rollout` record saying how the change ended. A change of the region's default
time zone goes the same way as a `zone_canary` (the list keeps the current zone; the
cohort's profiles carry the new one, rollout_zone.py). Nothing here touches MQTT; the
rules every program shares (cohort, digest, a cohort agent's verdict) are in
`clockfleet/protocol/rollout.py`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from clockfleet.protocol import rollout
from clockfleet.protocol.codec import utcnow_iso
from clockfleet.protocol.messages import ServerList

# The judging (Health, health, time_left) is shared with the collector's metrics: it lives
# in the protocol package.
from clockfleet.protocol.rollout import Health, issued, trial
from clockfleet.publisher.fleetfile import Fleet
from clockfleet.publisher.wire_objects import WireObject, member, server_pairs

# What a canary list carries besides the file's content, and what ends with it.
TRIAL_FIELDS = ("sig", "canary", "zone_canary", "rollout")

DEFAULT_BAKE_S = 600
DEFAULT_MAX_FAILING_PCT = 10.0
DEFAULT_MIN_REPORTED_PCT = 80.0
DEFAULT_OFFSET_TOLERANCE_S = 0.5  # the agents' confirm_offset_s: time-of-day routing's margin
MAX_BAKE_S = 7 * 86400


class PolicyError(ValueError):
    """A canary percentage, bake time or threshold outside its bounds."""


@dataclass(frozen=True)
class Policy:
    percent: float = 0.0  # 0: no canary, a changed list goes to the whole region at once
    bake_s: int = DEFAULT_BAKE_S
    max_failing_pct: float = DEFAULT_MAX_FAILING_PCT
    min_reported_pct: float = DEFAULT_MIN_REPORTED_PCT
    offset_tolerance_s: float = DEFAULT_OFFSET_TOLERANCE_S


def parse_percent(text: object) -> float:
    """`5%`, `5`, `0.5%` -> 5.0 ...; PolicyError outside 0..100 or not a number."""
    raw = str(text).strip()
    number = raw[:-1].strip() if raw.endswith("%") else raw
    try:
        value = float(number)
    except ValueError:
        raise PolicyError(f"canary {raw!r}: not a percentage (e.g. 10%)") from None
    if isinstance(text, bool) or not 0 <= value <= 100 or value != value:
        raise PolicyError(f"canary {raw!r}: must be within 0..100 %")
    if 0 < value < 0.01:
        raise PolicyError(f"canary {raw!r}: the smallest cohort is 0.01 %")
    return value


def policy_from(canary: str | None, bake_s: float | None, from_file: Mapping[str, float]) -> Policy:
    """The rollout policy: the command line over the fleet file's `rollout:` over defaults."""
    percent = from_file.get("canary", 0.0)
    if canary is not None:
        percent = parse_percent(canary)
    bake = from_file.get("bake_s", DEFAULT_BAKE_S) if bake_s is None else bake_s
    if not 0 <= bake <= MAX_BAKE_S:
        raise PolicyError(f"--bake {bake:g}: must be within 0..604800 s")
    return Policy(
        percent=percent,
        bake_s=int(bake),
        max_failing_pct=from_file.get("max_failing_pct", DEFAULT_MAX_FAILING_PCT),
        min_reported_pct=from_file.get("min_reported_pct", DEFAULT_MIN_REPORTED_PCT),
        offset_tolerance_s=from_file.get("offset_tolerance_s", DEFAULT_OFFSET_TOLERANCE_S),
    )


def change_id(version: int, new_servers: list[tuple[str, int]]) -> str:
    """The change's id: its version and its content, so every change draws its own cohort."""
    digest = rollout.list_digest(new_servers)
    return f"c{version}-{digest[:8]}"


def canary_object(
    current: WireObject, wanted: WireObject, version: int, policy: Policy
) -> WireObject:
    """The canary list (unsigned): `wanted` with the current servers and a canary of its own.

    Everything else (time zone, intervals) is the file's: only the servers are tried on a
    cohort first."""
    obj = {k: v for k, v in wanted.items() if k not in TRIAL_FIELDS}
    obj["servers"] = current["servers"]
    obj["version"] = version
    obj["canary"] = {
        "id": change_id(version, server_pairs(wanted["servers"])),
        "percent": policy.percent,
        "servers": wanted["servers"],
        "bake_s": policy.bake_s,
        "max_failing_pct": policy.max_failing_pct,
        "min_reported_pct": policy.min_reported_pct,
        "offset_tolerance_s": policy.offset_tolerance_s,
    }
    return obj


def zone_change_id(version: int, timezone: str) -> str:
    """A zone change's id: `z`, its version and a digest of the zone (its own cohort)."""
    return f"z{version}-{hashlib.sha256(timezone.encode()).hexdigest()[:8]}"


def zone_canary_object(
    current: WireObject, wanted: WireObject, version: int, policy: Policy
) -> WireObject:
    """The zone canary list (unsigned): `wanted` with the current zone and a `zone_canary`
    naming the new one. Agents take no zone from it; the cohort's profiles carry it."""
    new_zone = wanted["timezone"]
    assert isinstance(new_zone, str)
    obj = {k: v for k, v in wanted.items() if k not in TRIAL_FIELDS}
    obj["timezone"] = current["timezone"]
    obj["version"] = version
    obj["zone_canary"] = {
        "id": zone_change_id(version, new_zone),
        "percent": policy.percent,
        "timezone": new_zone,
        "bake_s": policy.bake_s,
        "max_failing_pct": policy.max_failing_pct,
        "min_reported_pct": policy.min_reported_pct,
    }
    return obj


def zone_followers(fleet: Fleet | None, region: str) -> set[str] | None:
    """The agents the fleet file places in `region` that take its default zone (no zone of
    their own): those a zone change moves. None without a file."""
    if fleet is None:
        return None
    return {a for a, p in fleet.agents.items() if p.region == region and p.inherits_zone}


@dataclass(frozen=True)
class Decision:
    phase: str  # "promoted" or "aborted"
    reason: str


def decide(sl: ServerList, h: Health, now: float) -> Decision | None:
    """Promote, abort, or None (keep baking). Failures abort at once; promotion waits for
    the bake time and for enough of the cohort to have reported."""
    canary = trial(sl)
    assert canary is not None
    n = len(h.cohort)
    if n == 0:
        return Decision("aborted", f"no agent of the region is in the {canary.percent:g} % cohort")
    if len(h.failing) * 100 > canary.max_failing_pct * n:
        first = sorted(h.failing.items())[0]
        return Decision(
            "aborted",
            f"{len(h.failing)} of {n} cohort agents failing (> {canary.max_failing_pct:g} %), "
            f"e.g. {first[0]}: {first[1]}",
        )
    if now - issued(sl) < canary.bake_s:
        return None
    if h.reported * 100 < canary.min_reported_pct * n:
        return Decision(
            "aborted",
            f"only {h.reported} of {n} cohort agents reported within the bake time "
            f"(< {canary.min_reported_pct:g} %)",
        )
    return Decision("promoted", f"{len(h.ok)} of {n} cohort agents healthy after the bake time")


def ending_object(
    current: WireObject,
    decision: Decision,
    h: Health,
    version: int,
    *,
    by: str = "auto",
    now: datetime | None = None,
) -> WireObject:
    """The list that ends a canary (unsigned): the canary's servers (or zone) when
    promoted, the list's own (the previous ones) when aborted; no canary; a record of how it
    ended."""
    zone = "zone_canary" in current
    canary = member(current, "zone_canary" if zone else "canary")
    obj = {k: v for k, v in current.items() if k not in TRIAL_FIELDS}
    if decision.phase == "promoted":
        obj["timezone" if zone else "servers"] = canary["timezone" if zone else "servers"]
    obj["version"] = version
    obj["issued_at"] = utcnow_iso(now or datetime.now(UTC))
    obj["rollout"] = {
        "id": canary["id"],
        "phase": decision.phase,
        "reason": decision.reason[:256],
        "cohort": len(h.cohort),
        "reported": h.reported,
        "failing": len(h.failing),
        "by": by,
    }
    return obj
