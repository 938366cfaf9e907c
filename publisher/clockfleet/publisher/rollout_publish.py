"""`clockfleet publish` with a canary: which planned changes go out as canaries.

A region whose servers changed, with a previous list on the broker and a canary percentage
(`--canary`, or `rollout: canary:` in the fleet file) above 0, goes out as a canary list
instead of the plain one. A region whose broker copy is a canary already is never replaced
by a plain publish: the file naming the canary's servers means "go on deciding", anything
else is refused (end the rollout first), so a region is never half-rolled unsaid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from clockfleet.protocol import rollout as cohorts
from clockfleet.protocol import signing
from clockfleet.publisher import rollout
from clockfleet.publisher.broker_copies import Retained
from clockfleet.publisher.plan import Plan
from clockfleet.publisher.versions import Kind


@dataclass
class Shaped:
    canaries: dict[str, str] = field(default_factory=dict)  # region -> change id
    continuing: set[str] = field(default_factory=set)  # canaries already on the broker
    refused: list[str] = field(default_factory=list)


def shape(
    the_plan: Plan,
    on_broker: dict[tuple[Kind, str], Retained],
    policy: rollout.Policy,
    key: signing.SigningKey | None,
) -> Shaped:
    """Rewrite the plan's region changes into canaries where the policy says so."""
    out = Shaped()
    for change in the_plan.changes:
        if change.kind != "region" or change.action != "publish":
            continue
        have = on_broker.get(("region", change.ident))
        # Only the copy this publisher issued last, verified, is a rollout in progress or the
        # base of a new one: a replayed or unsigned canary neither locks the region nor lends
        # it servers the operator has since removed (a plain publish replaces it).
        current = have.obj if have is not None and have.trusted(key is not None) else None
        wanted = json.loads(change.payload)
        if current is not None and current.get("canary") is not None:
            if current["canary"]["servers"] == wanted["servers"]:
                change.action = "unchanged"
                out.continuing.add(change.ident)
            else:
                out.refused.append(
                    f"region {change.ident}: rollout {current['canary']['id']} is in progress "
                    f"with other servers than the file's; end it first (`clockfleet rollout "
                    f"abort --region {change.ident}` or `promote`)"
                )
            continue
        if policy.percent <= 0 or current is None or "servers" not in change.fields:
            continue
        if current["servers"] == wanted["servers"]:
            continue
        assert change.new_version is not None
        obj = rollout.canary_object(current, wanted, change.new_version, policy)
        change.payload = rollout.finish(obj, key)
        change.fields.append(f"canary {policy.percent:g} % of the region first")
        out.canaries[change.ident] = obj["canary"]["id"]
    return out


def cohort_of(
    change: str, percent: float, region: str, reports: dict, placed: dict[str, str] | None
) -> tuple[list[str], int]:
    """(the region's known agents in the change's cohort, how many agents the region has).

    Known: placed in the region by the fleet file (`placed`), and reporting; a report's own
    `region` is only the agent's word (any agent may write any region into its report)."""
    if placed is None:
        known = sorted(a for a, r in reports.items() if r.region == region)
    else:
        known = sorted(a for a in reports if placed.get(a) == region)
    return [a for a in known if cohorts.in_cohort(change, a, percent)], len(known)


def policy_from(
    canary: str | None, bake_s: float | None, from_file: dict[str, float]
) -> rollout.Policy:
    """The rollout policy: the command line over the fleet file's `rollout:` over defaults."""
    percent = from_file.get("canary", 0.0)
    if canary is not None:
        percent = rollout.parse_percent(canary)
    bake = from_file.get("bake_s", rollout.DEFAULT_BAKE_S) if bake_s is None else bake_s
    if not 0 <= bake <= 7 * 86400:
        raise rollout.PolicyError(f"--bake {bake:g}: must be within 0..604800 s")
    return rollout.Policy(
        percent=percent,
        bake_s=int(bake),
        max_failing_pct=from_file.get("max_failing_pct", rollout.DEFAULT_MAX_FAILING_PCT),
        min_reported_pct=from_file.get("min_reported_pct", rollout.DEFAULT_MIN_REPORTED_PCT),
        offset_tolerance_s=from_file.get("offset_tolerance_s", rollout.DEFAULT_OFFSET_TOLERANCE_S),
    )


def empty_cohorts(
    shaped: Shaped, percent: float, reports: dict, placed: dict[str, str] | None
) -> list[str]:
    """One line per canary region whose cohort has no known agent: such a canary can only
    abort (nobody would try the new list), so it is refused before anything is sent."""
    lines = []
    for region, change in sorted(shaped.canaries.items()):
        cohort, known = cohort_of(change, percent, region, reports, placed)
        if not cohort:
            lines.append(
                f"region {region}: a {percent:g} % cohort of the {known} known agents of the "
                f"region is empty (zero agents would try the new list); a canary is judged "
                f"only by agents the fleet file places in the region (`agents:`) that report; "
                f"raise --canary, or publish with --canary 100%"
            )
    return lines
