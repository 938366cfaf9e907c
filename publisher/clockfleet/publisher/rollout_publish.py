"""`clockfleet publish` with a canary: which planned changes go out as canaries.

A region whose servers changed, with a previous list on the broker and a canary percentage
(`--canary`, or `rollout: canary:` in the fleet file) above 0, goes out as a canary list
instead of the plain one. A region whose default time zone changed (and nothing else of its
servers) goes out as a zone canary: the list keeps the current zone, the cohort's profiles
carry the new one, and the other profiles that take the region's zone keep the current one
until the rollout ends (rollout_zone.py). A change of both at once is refused: a canary
tries one change, so that its verdict names the cause. A region whose broker copy is a
canary already is never replaced by a plain publish: the file naming the canary's servers
(or zone) means "go on deciding", anything else is refused (end the rollout first), so a
region is never half-rolled unsaid.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from clockfleet.protocol import rollout as cohorts
from clockfleet.protocol import signing
from clockfleet.protocol.messages import Report
from clockfleet.publisher import canary, rollout_zone
from clockfleet.publisher.broker_copies import OnBroker
from clockfleet.publisher.fleetfile import Fleet
from clockfleet.publisher.plan import Change, Plan
from clockfleet.publisher.wire_objects import WireObject, member, seal


@dataclass
class Shaped:
    canaries: dict[str, str] = field(default_factory=dict)  # region -> change id
    continuing: set[str] = field(default_factory=set)  # canaries already on the broker
    refused: list[str] = field(default_factory=list)
    # region -> the agents its zone change moves (zone canaries, new or continuing)
    zone_followers: dict[str, set[str]] = field(default_factory=dict)


def shape(
    the_plan: Plan,
    on_broker: OnBroker,
    policy: canary.Policy,
    key: signing.SigningKey | None,
    fleet: Fleet | None = None,
) -> Shaped:
    """Rewrite the plan's region changes into canaries where the policy says so, and the
    profiles a zone canary holds back."""
    out = Shaped()
    zone_trials: dict[str, WireObject] = {}  # region -> its list with a zone_canary
    for change in the_plan.changes:
        if change.kind != "region" or change.action != "publish":
            continue
        have = on_broker.get(("region", change.ident))
        # Only the copy this publisher issued last, verified, is a rollout in progress or the
        # base of a new one: a replayed or unsigned canary neither locks the region nor lends
        # it servers the operator has since removed (a plain publish replaces it).
        current = have.obj if have is not None and have.trusted(key is not None) else None
        wanted: WireObject = json.loads(change.payload)  # our own payload, sealed by the plan
        if current is not None and _running(current) is not None:
            if _continue(change, current, wanted, out) and "zone_canary" in current:
                zone_trials[change.ident] = current
            continue
        if policy.percent <= 0 or current is None:
            continue
        servers = current["servers"] != wanted["servers"]
        zone = rollout_zone.zone_changed(current, wanted)
        if servers and zone:
            out.refused.append(
                f"region {change.ident}: its servers and its timezone changed together; a "
                "canary tries one change at a time (publish one, then the other after its "
                "rollout, or both at once to everyone with --canary 0%)"
            )
        elif servers:
            _start_canary(change, current, wanted, policy, key, out, zone=False)
        elif zone:
            trial = _start_canary(change, current, wanted, policy, key, out, zone=True)
            zone_trials[change.ident] = trial
    for region, listed in zone_trials.items():
        out.zone_followers[region] = canary.zone_followers(fleet, region) or set()
        rollout_zone.hold_profiles(the_plan, on_broker, listed, out.zone_followers[region], key)
    return out


def _running(current: WireObject) -> WireObject | None:
    for name in ("canary", "zone_canary"):
        if current.get(name) is not None:
            return member(current, name)
    return None


def _continue(change: Change, current: WireObject, wanted: WireObject, out: Shaped) -> bool:
    """A rollout is on the broker: go on deciding it when the file names its change (True),
    else refuse the publish."""
    running = _running(current)
    assert running is not None
    if "zone_canary" in current:
        same = current["servers"] == wanted["servers"] and running["timezone"] == wanted.get(
            "timezone"
        )
    else:
        same = running["servers"] == wanted["servers"] and current.get("timezone") == wanted.get(
            "timezone"
        )
    if same:
        change.action = "unchanged"
        out.continuing.add(change.ident)
        return True
    out.refused.append(
        f"region {change.ident}: rollout {running['id']} is in progress with other servers "
        f"or another timezone than the file's; end it first (`clockfleet rollout abort "
        f"--region {change.ident}` or `promote`)"
    )
    return False


def _start_canary(
    change: Change,
    current: WireObject,
    wanted: WireObject,
    policy: canary.Policy,
    key: signing.SigningKey | None,
    out: Shaped,
    *,
    zone: bool,
) -> WireObject:
    """Seal the canary list (servers, or with `zone` the region's timezone) in place of the
    change's payload; returns the list."""
    assert change.new_version is not None
    if zone:
        obj = canary.zone_canary_object(current, wanted, change.new_version, policy)
        what = f"zone canary: {wanted['timezone']} on {policy.percent:g} % first"
    else:
        obj = canary.canary_object(current, wanted, change.new_version, policy)
        what = f"canary {policy.percent:g} % of the region first"
    change.payload = seal("region", change.ident, obj, key, "list")
    change.fields.append(what)
    out.canaries[change.ident] = str(member(obj, "zone_canary" if zone else "canary")["id"])
    return obj


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
        followers = shaped.zone_followers.get(region)
        # A zone change is judged by the agents it moves: those that take the region's zone.
        judges = placed if followers is None else {a: region for a in followers}
        cohort, known = cohort_of(change, percent, region, reports, judges)
        if not cohort:
            lines.append(
                f"region {region}: a {percent:g} % cohort of the {known} known agents of the "
                f"region is empty (zero agents would try the new list); a canary is judged "
                f"only by agents the fleet file places in the region (`agents:`) that report"
                f"{'' if followers is None else ' and take its zone (no timezone of their own)'}"
                f"; raise --canary, or publish with --canary 100%"
            )
    return lines
