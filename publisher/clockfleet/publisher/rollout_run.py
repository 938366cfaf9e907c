"""Running a rollout to its decision: watch the cohort, then promote or abort, by itself.

Everything the decision needs is on the broker: the canary list (signed: its servers, the
cohort's percentage, bake time and thresholds, issued_at as the bake's start) and the
agents' reports. So a decider killed mid-rollout and started again (`clockfleet rollout run`,
or the same `clockfleet publish`) goes on from the broker's copy. The version that ends a
canary is recorded in the state file before it is sent, as every publish is.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clockfleet.protocol import signing
from clockfleet.protocol.messages import ServerList
from clockfleet.protocol.rollout import Health, health, time_left
from clockfleet.protocol.topics import servers_topic
from clockfleet.publisher import broker_io, rollout
from clockfleet.publisher.rollout_watch import Watch
from clockfleet.publisher.state import State
from clockfleet.publisher.versions import VersionJump, date_floor, next_version

EXIT_ABORTED = 3


@dataclass
class Ender:
    """Publishes the list that ends a canary."""

    session: broker_io.Session
    record: State
    prefix: str
    key: signing.SigningKey | None
    timeout_s: float
    out: list[str] = field(default_factory=list)

    def end(
        self, sl: ServerList, obj: dict, decision: rollout.Decision, h: Health, by: str
    ) -> bool:
        region = sl.region
        try:
            version = next_version(
                sl.version, self.record.get(self.prefix, "region", region), date_floor()
            )
        except VersionJump as exc:
            _say(f"region {region}: cannot end the rollout: {exc}")
            return False
        body = rollout.ending_object(obj, decision, h, version, by=by)
        payload = rollout.finish(body, self.key)
        self.record.record(self.prefix, "region", region, version)
        self.record.save()
        [outcome] = broker_io.publish_retained(
            self.session, [(servers_topic(self.prefix, region), payload)], self.timeout_s
        )
        if not outcome.ok:
            _say(f"region {region}: rollout {decision.phase} NOT published: {outcome.reason}")
            return False
        _say(
            f"region {region}: rollout {sl.canary.id if sl.canary else '?'} {decision.phase} "
            f"(v{sl.version} -> v{version}): {decision.reason}"
        )
        return True


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
    pending = set(regions) if regions is not None else None
    aborted = failed = False
    announced: set[str] = set()
    while True:
        snap = watch.snapshot()
        canaries = {r: v for r, v in snap.lists.items() if v[0].canary is not None}
        if pending is None:
            pending = set(canaries)
        for region in sorted(pending):
            have = canaries.get(region)
            seen = snap.lists.get(region)
            if at_least and (seen is None or seen[0].version < at_least.get(region, 0)):
                continue
            if have is None:
                done = snap.lists.get(region)
                record = done[0].rollout if done else None
                if record is not None:
                    _say(f"region {region}: rollout {record.id} already {record.phase}")
                    aborted |= record.phase == "aborted"
                pending.discard(region)
                continue
            sl, obj = have
            h = health(sl, snap.reports, snap.baselines)
            if region not in announced:
                announced.add(region)
                _say(
                    f"region {region}: canary {sl.canary.id} (v{sl.version}), cohort "
                    f"{len(h.cohort)} of {h.region_agents} known agents, "
                    f"{time_left(sl, time.time()):.0f} s of bake time left"
                )
            decision = rollout.decide(sl, h, time.time())
            if decision is None:
                continue
            if ender.end(sl, obj, decision, h, "auto"):
                aborted |= decision.phase == "aborted"
            else:
                failed = True
            pending.discard(region)
        if not pending:
            break
        if deadline_s is not None and time.monotonic() - started > deadline_s:
            for region in sorted(pending):
                _say(f"region {region}: still in canary; `clockfleet rollout run` continues it")
            return 1
        time.sleep(step_s)
    if failed:
        return 1
    return EXIT_ABORTED if aborted else 0


def end_by_hand(watch: Watch, ender: Ender, region: str, phase: str) -> int:
    """`clockfleet rollout promote|abort --region R`: the operator's decision, now."""
    snap = watch.snapshot()
    have = snap.lists.get(region)
    if have is None or have[0].canary is None:
        print(f"clockfleet rollout: region {region} has no canary in progress", file=sys.stderr)
        return 2
    sl, obj = have
    h = health(sl, snap.reports, snap.baselines)
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    decision = rollout.Decision(phase, f"by the operator at {when}")
    return 0 if ender.end(sl, obj, decision, h, "operator") else 1
