"""A region's time-zone change as a canary: which profiles carry it, when.

Agents take their zone from their profile before their region's list, and every agent the
fleet file places has a profile: so the zone travels in profiles. Those a zone change moves
are the region's agents without a zone of their own (`canary.zone_followers`).

- The canary (v+1 of the list, `zone_canary` naming the new zone, `timezone` still the
  current one): the cohort's followers get their profile with the new zone; every other
  follower's profile keeps the current zone (`hold_profiles`), whatever the file says.
- Promoted: every follower's profile gets the new zone; the list's `timezone` becomes it.
- Aborted: every follower's profile gets the current zone back; the list keeps it.

An agent of any version applies a profile, so none needs to know about zone canaries: an
agent that predates them ignores `zone_canary` and takes the zone its profile names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from clockfleet.protocol import rollout, signing
from clockfleet.protocol.codec import utcnow_iso
from clockfleet.protocol.messages import ServerList
from clockfleet.publisher.broker_copies import BrokerCopy, OnBroker
from clockfleet.publisher.canary import zone_followers
from clockfleet.publisher.fleetfile import Fleet
from clockfleet.publisher.issued_record import IssuedRecord
from clockfleet.publisher.plan import Plan
from clockfleet.publisher.versions import date_floor, next_version
from clockfleet.publisher.wire_objects import WireObject, content_of, member, profile_object, seal


def zone_changed(current: WireObject, wanted: WireObject) -> bool:
    """Did the region's default zone change from one zone to another? (A zone added or
    removed moves no profile: every placed agent then has a zone of its own.)"""
    old, new = current.get("timezone"), wanted.get("timezone")
    return isinstance(old, str) and isinstance(new, str) and old != new


def hold_profiles(
    the_plan: Plan,
    on_broker: OnBroker,
    listed: WireObject,
    followers: set[str],
    key: signing.SigningKey | None,
) -> None:
    """Keep the current zone in the planned profiles of followers outside the cohort of the
    zone canary in `listed` (a list with `zone_canary`; its `timezone` is the current
    zone): unchanged when the broker already holds that, else re-sealed with it."""
    zc = member(listed, "zone_canary")
    old, percent = listed["timezone"], zc["percent"]
    assert isinstance(percent, (int, float))
    held = 0
    for change in the_plan.changes:
        if change.kind != "profile" or change.action != "publish" or change.ident not in followers:
            continue
        if rollout.in_cohort(str(zc["id"]), change.ident, percent):
            continue  # the cohort: the file's profile, with the new zone
        body: WireObject = json.loads(change.payload)
        body.pop("sig", None)
        body["timezone"] = old
        have = on_broker.get(("profile", change.ident))
        held += 1
        if (
            have is not None
            and have.obj is not None
            and have.trusted(key is not None)
            and content_of(have.obj) == content_of(body)
        ):
            change.action = "unchanged"
            continue
        change.payload = seal("profile", change.ident, body, key)
        change.fields.append(f"timezone {old} until rollout {zc['id']} ends")
    if held:
        print(
            f"region {listed['region']}: {held} profiles keep {old} until rollout {zc['id']} "
            f"ends (the cohort tries {zc['timezone']})",
            flush=True,
        )


@dataclass(frozen=True)
class ProfileEnding:
    agent: str
    version: int
    payload: bytes


def ending_profiles(
    sl: ServerList,
    phase: str,
    fleet: Fleet,
    profiles: Mapping[str, BrokerCopy],
    record: IssuedRecord,
    prefix: str,
    key: signing.SigningKey | None,
) -> list[ProfileEnding]:
    """The profiles that end `sl`'s zone canary: every follower's zone becomes the new one
    (promoted) or the current one again (aborted); a follower whose verified broker copy
    already says so is left alone. Raises VersionJump like any publish."""
    zc = sl.zone_canary
    assert zc is not None
    target = zc.timezone if phase == "promoted" else sl.timezone
    if target is None:
        return []
    issued_at = utcnow_iso()
    out = []
    for agent in sorted(zone_followers(fleet, sl.region) or ()):
        have = profiles.get(agent)
        if (
            have is not None
            and have.obj is not None
            and have.trusted(key is not None)
            and (have.obj.get("timezone"), have.obj.get("region")) == (target, sl.region)
        ):
            continue
        version = next_version(
            have.counted_version if have is not None else None,
            record.last_version(prefix, "profile", agent),
            date_floor(),
        )
        body: WireObject = {
            **profile_object(fleet.agents[agent]),
            "timezone": target,
            "version": version,
            "issued_at": issued_at,
        }
        out.append(ProfileEnding(agent, version, seal("profile", agent, body, key)))
    return out
