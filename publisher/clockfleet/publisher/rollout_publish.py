"""`clockfleet publish` with a canary: which planned changes go out as canaries.

A region whose servers changed, with a previous list on the broker and a canary percentage
(`--canary`, or `rollout: canary:` in the fleet file) above 0, goes out as a canary list
instead of the plain one. A region whose broker copy is a canary already is never replaced
by a plain publish: the file naming the canary's servers means "go on deciding", anything
else is refused (end the rollout first), so a region is never half-rolled unsaid.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from clockfleet.protocol import rollout as cohorts
from clockfleet.protocol import signing
from clockfleet.protocol.messages import Report
from clockfleet.publisher import canary
from clockfleet.publisher.broker_copies import OnBroker
from clockfleet.publisher.plan import Plan
from clockfleet.publisher.wire_objects import WireObject, member, seal


@dataclass
class Shaped:
    canaries: dict[str, str] = field(default_factory=dict)  # region -> change id
    continuing: set[str] = field(default_factory=set)  # canaries already on the broker
    refused: list[str] = field(default_factory=list)


def shape(
    the_plan: Plan,
    on_broker: OnBroker,
    policy: canary.Policy,
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
        wanted: WireObject = json.loads(change.payload)  # our own payload, sealed by the plan
        if current is not None and current.get("canary") is not None:
            running = member(current, "canary")
            if running["servers"] == wanted["servers"]:
                change.action = "unchanged"
                out.continuing.add(change.ident)
            else:
                out.refused.append(
                    f"region {change.ident}: rollout {running['id']} is in progress "
                    f"with other servers than the file's; end it first (`clockfleet rollout "
                    f"abort --region {change.ident}` or `promote`)"
                )
            continue
        if policy.percent <= 0 or current is None or "servers" not in change.fields:
            continue
        if current["servers"] == wanted["servers"]:
            continue
        assert change.new_version is not None
        obj = canary.canary_object(current, wanted, change.new_version, policy)
        change.payload = seal("region", change.ident, obj, key, "list")
        change.fields.append(f"canary {policy.percent:g} % of the region first")
        out.canaries[change.ident] = str(member(obj, "canary")["id"])
    return out


def cohort_of(
    change: str,
    percent: float,
    region: str,
    reports: Mapping[str, Report],
    placed: Mapping[str, str] | None,
) -> tuple[list[str], int]:
    """(the region's known agents in the change's cohort, how many agents the region has).

    Known: placed in the region by the fleet file (`placed`), and reporting; a report's own
    `region` is only the agent's word (any agent may write any region into its report)."""
    if placed is None:
        known = sorted(a for a, r in reports.items() if r.region == region)
    else:
        known = sorted(a for a in reports if placed.get(a) == region)
    return [a for a in known if cohorts.in_cohort(change, a, percent)], len(known)


def empty_cohorts(
    shaped: Shaped,
    percent: float,
    reports: Mapping[str, Report],
    placed: Mapping[str, str] | None,
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
