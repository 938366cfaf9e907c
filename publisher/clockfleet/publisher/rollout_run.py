"""Running a rollout to its decision: watch the cohort, then promote or abort, by itself.

Everything the decision needs is on the broker: the canary list (signed: its servers, the
cohort's percentage, bake time and thresholds, issued_at as the bake's start) and the
agents' reports. So a decider killed mid-rollout and started again (`clockfleet rollout run`,
or the same `clockfleet publish`) goes on from the broker's copy. The version that ends a
canary is recorded in the state file before it is sent, as every publish is.

Only the copy this publisher issued last is acted on (rollout_watch.py): a replayed older
canary, or one that does not verify, is never continued, promoted or aborted; it is
replaced by the fleet file's list, so the region ends on the operator's list whatever
command the operator runs. Only agents the fleet file places in a region judge its
canary (`placement`); others that claim the region in their reports are shown apart. A zone
change is judged by the placed agents that take the region's zone, and its end publishes
their profiles with the list (rollout_zone.py): it needs the fleet file.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clockfleet.protocol import signing
from clockfleet.protocol.codec import utcnow_iso
from clockfleet.protocol.messages import ServerList
from clockfleet.protocol.rollout import Health, health, time_left, trial
from clockfleet.protocol.topics import profile_topic, servers_topic
from clockfleet.publisher import broker_io, canary, rollout_zone
from clockfleet.publisher.broker_copies import BrokerCopy
from clockfleet.publisher.cli_common import ROLLOUT, fail
from clockfleet.publisher.fleetfile import Fleet
from clockfleet.publisher.issued_record import IssuedRecord
from clockfleet.publisher.rollout_watch import Snapshot, Watch
from clockfleet.publisher.versions import VersionJump, date_floor, next_version
from clockfleet.publisher.wire_objects import WireObject, region_object, seal

EXIT_ABORTED = 3


def placement(fleet: Fleet | None) -> dict[str, str] | None:
    """agent -> region, as the fleet file places each agent (its profile); None without a
    file (the reports' own word is then all there is, and `rollout status` says so)."""
    if fleet is None:
        return None
    return {agent: p.region for agent, p in fleet.agents.items()}


@dataclass
class Ender:
    """Publishes the list that ends a canary, or the file's list in place of a broker copy
    that is not to be acted on."""

    session: broker_io.PublisherSession
    record: IssuedRecord
    prefix: str
    key: signing.SigningKey | None
    timeout_s: float
    fleet: Fleet | None = None

    def replace(self, region: str, problem: str) -> bool:
        """Publish the fleet file's list of `region` in place of the broker's copy, which is
        stale or does not verify (`problem`): True when it went out."""
        if self.fleet is None or region not in self.fleet.regions:
            _say(
                f"region {region}: the broker's copy is not acted on ({problem}); the fleet "
                "file does not name this region: `clockfleet publish --prune` withdraws it"
            )
            return False
        recorded = self.record.last_version(self.prefix, "region", region)
        version = next_version(None, recorded, date_floor())
        body = {
            **region_object(self.fleet.regions[region]),
            "version": version,
            "issued_at": utcnow_iso(),
        }
        [result] = self._issue(region, version, body)
        if not result.ok:
            _say(f"region {region}: the file's list NOT published: {result.reason}")
            return False
        _say(
            f"region {region}: the broker's copy is not acted on ({problem}); replaced by the "
            f"fleet file's list as v{version}"
        )
        return True

    def end(
        self,
        sl: ServerList,
        obj: WireObject,
        decision: canary.Decision,
        h: Health,
        by: str,
        profiles: Mapping[str, BrokerCopy] | None = None,
    ) -> bool:
        """Publish the list that ends `sl`'s canary as `decision` says, and for a zone change
        the profiles of the agents it moves (`profiles`: the broker's copies): True when
        all went out."""
        region = sl.region
        tried = trial(sl)
        change = tried.id if tried is not None else "?"
        try:
            version = next_version(
                sl.version, self.record.last_version(self.prefix, "region", region), date_floor()
            )
            moved = self._moved_profiles(sl, decision.phase, profiles or {})
        except VersionJump as exc:
            _say(f"region {region}: cannot end the rollout: {exc}")
            return False
        if moved is None:
            _say(
                f"region {region}: rollout {change} changes a time zone: it is ended with the "
                "fleet file that places the agents it moves (--config); nothing published"
            )
            return False
        ending = canary.ending_object(obj, decision, h, version, by=by)
        results = self._issue(region, version, ending, moved)
        failed = [r for r in results if not r.ok]
        if failed:
            why = "; ".join(f"{r.topic}: {r.reason}" for r in failed[:3])
            _say(f"region {region}: rollout {decision.phase} NOT published: {why}")
            return False
        with_profiles = f", {len(moved)} profiles" if moved else ""
        _say(
            f"region {region}: rollout {change} {decision.phase} "
            f"(v{sl.version} -> v{version}{with_profiles}): {decision.reason}"
        )
        return True

    def _moved_profiles(
        self, sl: ServerList, phase: str, profiles: Mapping[str, BrokerCopy]
    ) -> list[rollout_zone.ProfileEnding] | None:
        """The profiles a zone change's end publishes ([] for a server change); None when
        they cannot be known (no fleet file)."""
        if sl.zone_canary is None:
            return []
        if self.fleet is None:
            return None
        return rollout_zone.ending_profiles(
            sl, phase, self.fleet, profiles, self.record, self.prefix, self.key
        )

    def _issue(
        self,
        region: str,
        version: int,
        body: WireObject,
        profiles: list[rollout_zone.ProfileEnding] | None = None,
    ) -> list[broker_io.PublishResult]:
        """Seal the list, record it and the profiles, then send them: a version is in the
        record before any agent can see it."""
        payload = seal("region", region, body, self.key, "list")
        self.record.record(self.prefix, "region", region, version, payload)
        messages = [(servers_topic(self.prefix, region), payload)]
        for p in profiles or []:
            self.record.record(self.prefix, "profile", p.agent, p.version, p.payload)
            messages.append((profile_topic(self.prefix, p.agent), p.payload))
        self.record.save()
        return broker_io.publish_retained(self.session, messages, self.timeout_s)


def unplaced_line(region: str, agents: list[str]) -> str:
    shown = ", ".join(agents[:5]) + (" ..." if len(agents) > 5 else "")
    return (
        f"region {region}: {len(agents)} agents claim this region in their reports, but the "
        f"fleet file places them elsewhere or nowhere: not counted ({shown})"
    )


def _say(line: str) -> None:
    print(line, flush=True)


def drive(
    watch: Watch,
    ender: Ender,
    regions: set[str] | None,
    *,
    deadline_s: float | None = None,
    step_s: float = 0.5,
    at_least: dict[str, int] | None = None,
) -> int:
    """Decide every canary in `regions` (None: every region with one) and return the exit
    code: 0 all promoted (or nothing to decide), EXIT_ABORTED any aborted, 1 a decision not
    published or the deadline passed with a region still undecided (named on stdout).

    `at_least`: region -> the canary version just published; until the watch has seen it
    (our own publish comes back like anyone's), the region is not judged."""
    started = time.monotonic()
    decider = _Decider(ender, regions, at_least or {})
    while decider.step(watch.snapshot()):
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            for region in sorted(decider.undecided()):
                _say(f"region {region}: still in canary; `clockfleet rollout run` continues it")
            return 1
        time.sleep(step_s)
    if decider.failed:
        return 1
    return EXIT_ABORTED if decider.aborted else 0


@dataclass
class _Decider:
    """drive()'s progress over the snapshots it reads: which regions are still undecided,
    and what became of the others."""

    ender: Ender
    regions: set[str] | None  # None: every region with a canary in the first snapshot
    at_least: dict[str, int]
    aborted: bool = False
    failed: bool = False
    announced: set[str] = field(default_factory=set)
    replaced: set[str] = field(default_factory=set)
    pending: set[str] | None = field(init=False, default=None)
    placed: dict[str, str] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.pending = set(self.regions) if self.regions is not None else None
        self.placed = placement(self.ender.fleet)

    def undecided(self) -> set[str]:
        return self.pending or set()

    def step(self, snap: Snapshot) -> bool:
        """Act on one snapshot; True while some region is still undecided."""
        for region, problem in sorted(snap.list_problems.items()):
            concerned = self.regions is None or region in self.regions
            if concerned and region not in self.replaced and region not in self.at_least:
                self.replaced.add(region)
                self.failed |= not self.ender.replace(region, problem)
        canaries = {r: v for r, v in snap.lists.items() if trial(v[0]) is not None}
        if self.pending is None:
            self.pending = set(canaries)
        for region in sorted(self.pending):
            if self._settled(region, snap, canaries):
                self.pending.discard(region)
        return bool(self.pending)

    def _settled(
        self, region: str, snap: Snapshot, canaries: dict[str, tuple[ServerList, WireObject]]
    ) -> bool:
        """Judge one region; True once nothing is left to decide for it."""
        if region in self.replaced:
            return True
        seen = snap.lists.get(region)
        if self.at_least and (seen is None or seen[0].version < self.at_least.get(region, 0)):
            return False
        have = canaries.get(region)
        if have is None:
            ended = seen[0].rollout if seen else None
            if ended is not None:
                _say(f"region {region}: rollout {ended.id} already {ended.phase}")
                self.aborted |= ended.phase == "aborted"
            return True
        sl, obj = have
        followers = canary.zone_followers(self.ender.fleet, region)
        h = health(sl, snap.reports, snap.baselines, self.placed, followers)
        if region not in self.announced:
            self.announced.add(region)
            self._announce(region, sl, h)
        decision = canary.decide(sl, h, time.time())
        if decision is None:
            return False
        if self.ender.end(sl, obj, decision, h, "auto", snap.profiles):
            self.aborted |= decision.phase == "aborted"
        else:
            self.failed = True
        return True

    def _announce(self, region: str, sl: ServerList, h: Health) -> None:
        tried = trial(sl)
        assert tried is not None  # only canaries are judged
        what = f" of zone {sl.zone_canary.timezone}" if sl.zone_canary is not None else ""
        _say(
            f"region {region}: canary{what} {tried.id} (v{sl.version}), cohort "
            f"{len(h.cohort)} of {h.region_agents} known agents, "
            f"{time_left(sl, time.time()):.0f} s of bake time left"
        )
        if h.unplaced:
            _say(unplaced_line(region, h.unplaced))


def end_by_hand(watch: Watch, ender: Ender, region: str, phase: str) -> int:
    """`clockfleet rollout promote|abort --region R`: the operator's decision, now."""
    snap = watch.snapshot()
    problem = snap.list_problems.get(region)
    if problem is not None:  # a replayed or unsigned copy: the region goes back to the file
        return 0 if ender.replace(region, problem) else 1
    have = snap.lists.get(region)
    if have is None or trial(have[0]) is None:
        return fail(ROLLOUT, f"region {region} has no canary in progress")
    sl, obj = have
    followers = canary.zone_followers(ender.fleet, region)
    h = health(sl, snap.reports, snap.baselines, placement(ender.fleet), followers)
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    decision = canary.Decision(phase, f"by the operator at {when}")
    return 0 if ender.end(sl, obj, decision, h, "operator", snap.profiles) else 1
