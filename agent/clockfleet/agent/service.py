"""One agent: follow a region's signed server list and a profile, sync, report.

An `Agent` is a plain object with no thread of its own and no global state, driven by a host
(`clockfleet.agent.fleet.Fleet`) that fires its timers, runs its blocking work and drives its
broker link's socket. One process can hold one agent (the service, `--once`) or thousands
(the fleet simulator, the benchmarks). The host interface (all on the host's loop thread):

    host.call_later(delay_s, fn) -> handle with .cancel()
    host.run_blocking(fn, done)   # fn() on a worker; done(result, error) back on the loop
    host.watch(client)            # route this paho client's socket through the loop
    host.watch_readable(fd, fn)   # and an NTP query's socket (probe_pass.py); unwatch(fd)

Where each job lives:

    link.py     the broker connection: connect, rotation, backoff, subscriptions, status
    intake.py   what is accepted: lists, profiles, commands (pure rules)
    probe.py    the probe, on the host's loop (probe_pass.py: the staggered pass)
    sync.py     the rest of a sync: clock backend, time zone (on a worker if it blocks)
    report.py   the report of one sync (pure)
    schedule.py when the next sync is due (pure)
    state.py    the state directory and status.json
    once.py     the `--once` driver

This module ties them together: what is in force (list, profile, versions), when to sync,
and what to do with a sync's outcome. A new list or profile -> sync after 0..resync_jitter_s;
then every poll_interval_s (jittered); failures retry with capped exponential backoff. Every
sync publishes a retained QoS 1 `clock.report/1` and rewrites the local status file.

(Why over 400 lines: those three jobs share the agent's state and each is small; split
further, every part would need the whole agent passed in.)
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import msgspec

from clockfleet.agent import intake, schedule
from clockfleet.agent.clock_evidence import Floor, behind_evidence, release_floor
from clockfleet.agent.config import Tuning
from clockfleet.agent.link import BrokerLink, LinkEvents
from clockfleet.agent.localloop import run_inline
from clockfleet.agent.probe import KodMemory, ProbeResult, ProbeSettings, start_probe
from clockfleet.agent.report import SyncJob, SyncOutcome, build_report, job_for
from clockfleet.agent.state import (
    LastGood,
    Remembered,
    StateDir,
    load_cached,
    local_status,
    residual_offset,
)
from clockfleet.agent.sync import finish_sync, needs_worker
from clockfleet.protocol import codec, signing, topics
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.connection import ConnectionSettings, unguessable_client_id
from clockfleet.protocol.messages import Command, Profile, Report, ServerList, Status
from clockfleet.protocol.version import __version__

log = logging.getLogger("clockfleet.agent")


class AgentSettings(Tuning, kw_only=True):
    """What one running agent works with: the tuning agent.yaml shares (`Tuning`, one default
    each) plus what the program around it resolved (keys loaded, paths made)."""

    agent_id: str
    trust: signing.TrustStore = msgspec.field(default_factory=signing.TrustStore)
    probe_settings: Any = None  # ProbeSettings; None: the probe's defaults
    tz_root: Optional[Path] = None  # None: never touch a time zone
    software: str = __version__


class Agent:
    """See the module docstring. Only the host's loop thread may call its methods."""

    def __init__(
        self,
        settings: AgentSettings,
        conn: ConnectionSettings,
        *,
        backend: Any,
        kod: Any = None,
        state: Optional[StateDir] = None,
        rng: Optional[random.Random] = None,
        wall_clock: Callable[[], float] = time.time,
        once: bool = False,
        client_id: Optional[str] = None,
    ) -> None:
        self.settings = settings
        self.id = settings.agent_id
        self.conn = conn
        self.prefix = conn.prefix
        self.backend = backend
        self.probe_settings = settings.probe_settings or ProbeSettings()
        self.kod = kod if kod is not None else KodMemory()
        self.state = state
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.once = once  # --once: no status, no schedule of its own (once.py drives it)
        self.host: Any = None

        # what is in force
        self.server_list: Optional[ServerList] = None
        self.list_payload: Optional[bytes] = None
        self.profile: Optional[Profile] = None
        self.profile_payload: Optional[bytes] = None
        self.memory = Remembered()
        self.list_region: Optional[str] = None  # the region whose list topic we follow

        # what happened: rejection reasons and events (status.json shows them)
        self.counters: collections.Counter[str] = collections.Counter()
        self.last_report: Optional[Report] = None
        self.last_report_payload: Optional[bytes] = None
        self.reports_made = 0
        self.reports_acked = 0
        # observers: the --once driver, benchmarks (on the loop thread)
        self.on_report: Optional[Callable[[Agent, Report], None]] = None
        self.on_changed: Optional[Callable[[str], None]] = None
        self.on_online: Optional[Callable[[], None]] = None
        self.on_acked: Optional[Callable[[], None]] = None
        self.on_unreachable: Optional[Callable[[str], None]] = None

        # syncing
        self._startup_done = False
        self._sync_timer: Any = None
        self._sync_due = float("inf")
        self._syncing = False
        self._sync_again = False
        self._failures = 0
        self._last_good: Optional[LastGood] = None
        self._stale_timer: Any = None
        # A good sync since start left this host's clock within the panic limit: from then
        # on the limit stands, certificates' dates are checked and command ages judged.
        self.clock_known_good = False
        self._last_cmd: Optional[float] = None  # monotonic time of the last command obeyed

        self._t_profile = topics.profile_topic(self.prefix, self.id)
        self._t_cmd = topics.cmd_topic(self.prefix, self.id)
        self._list_prefix = f"{self.prefix}/regions/"
        events = LinkEvents(
            online=self._online,
            message=self._on_message,
            session=self._session_moved,
            report_acked=self._report_acked,
            unreachable=self._unreachable,
        )
        # A persistent session (service): QoS 1 reports in flight survive a reconnect. --once
        # uses its own client id and a clean session so it never takes over the service's.
        self.link = BrokerLink(
            self.id,
            conn,
            events,
            announce=not once,
            status_payload=self._status_payload,
            clock_behind=self._clock_behind_evidence,
            counters=self.counters,
            rng=self.rng,
            reconnect_min_s=settings.reconnect_min_s,
            reconnect_max_s=settings.reconnect_max_s,
            keepalive_s=settings.keepalive_s,
            client_id=client_id
            or unguessable_client_id(
                f"clockfleet-agent-{self.id}" + ("-once" if once else ""), conn.password
            ),
            clean_session=once,
        )
        self.client = self.link.client

    # --- what is in force ------------------------------------------------------------------

    @property
    def region(self) -> Optional[str]:
        """The region this agent belongs to: its profile's, else the configured fallback."""
        if self.profile is not None:
            return self.profile.region
        return self.settings.region

    @property
    def poll_interval_s(self) -> float:
        sl = self.server_list
        if sl is not None and sl.poll_interval_s is not None:
            return float(sl.poll_interval_s)
        return self.settings.poll_interval_s

    @property
    def resync_jitter_s(self) -> float:
        sl = self.server_list
        if sl is not None and sl.resync_jitter_s is not None:
            return float(sl.resync_jitter_s)
        return self.settings.resync_jitter_s

    def desired_timezone(self) -> Optional[str]:
        if self.profile is not None:
            return self.profile.timezone
        if self.server_list is not None and self.server_list.timezone is not None:
            return self.server_list.timezone
        return self.settings.timezone

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def closed(self) -> bool:
        return self.link.closed

    # --- lifecycle -------------------------------------------------------------------------

    def attach(self, host: Any) -> None:
        self.host = host
        self.link.attach(host)

    def start(self) -> None:
        """Load the cache, connect, and arm the start-up delay (RFC 4330: randomised)."""
        assert self.host is not None, "attach() the agent to a host first"
        self._load_cache()
        self._follow(self.region)
        self.link.start(self.memory.session)
        if self.once:
            return  # the --once driver says when to sync
        self._write_status()
        delay = schedule.startup_delay(self.rng, self.settings.startup_delay_s)
        if delay > 0:
            log.info("%s: start-up delay %.1f s before the first sync", self.id, delay)
        self.host.call_later(delay, self._startup_elapsed)

    def stop(self) -> None:
        """Clean shutdown: the link says `offline` with this session and disconnects."""
        for t in (self._sync_timer, self._stale_timer):
            if t is not None:
                t.cancel()
        self._sync_timer = None
        self._sync_due = -1.0  # never re-armed
        self.link.stop()

    def _startup_elapsed(self) -> None:
        self._startup_done = True
        if self.server_list is not None:
            self._sync_at(0.0, "start-up")
        else:
            log.info("%s: no server list yet; waiting for region %s", self.id, self.region)

    def _follow(self, region: Optional[str]) -> None:
        """Hold the topics this agent reads: its profile, its region's list, its commands."""
        self.list_region = region
        wanted = [self._t_profile]
        if region is not None:
            wanted.append(topics.servers_topic(self.prefix, region))
        if not self.once:
            wanted.append(self._t_cmd)
        self.link.hold(wanted)

    # --- the state directory ---------------------------------------------------------------

    def _load_cache(self) -> None:
        """The last good profile, list and report from before a restart, verified again."""
        if self.state is None:
            return
        self.memory = self.state.load_remembered()
        cached = load_cached(
            self.state,
            self.id,
            self.settings.trust,
            with_report=not self.once,
            wall_now=self.wall_clock(),
            trust_offset_s=self.settings.trust_offset_s,
        )
        for reason in cached.refused:
            self.counters[reason] += 1
        self.profile, self.profile_payload = cached.profile, cached.profile_payload
        self.server_list, self.list_payload = cached.server_list, cached.list_payload
        self.last_report, self.last_report_payload = cached.report, cached.report_payload
        self._last_good = cached.last_good

    def _save_memory(self) -> None:
        if self.state is not None:
            self.state.save_remembered(self.memory)

    # --- the link's events ------------------------------------------------------------------

    def _online(self) -> None:
        if self.on_online is not None:
            self.on_online()

    def _session_moved(self, session: int) -> None:
        self.memory.session = session
        self._save_memory()

    def _report_acked(self) -> None:
        self.reports_acked += 1
        if self.on_acked is not None:
            self.on_acked()

    def _unreachable(self, why: str) -> None:
        if self.on_unreachable is not None:
            self.on_unreachable(why)

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._t_profile:
            self._on_profile(payload)
        elif topic == self._t_cmd:
            self._on_cmd(payload)
        elif topic.startswith(self._list_prefix):
            try:
                ref = topics.parse_topic(self.prefix, topic)
            except topics.TopicError as exc:
                self._reject("list", "bad-topic", str(exc))
                return
            if ref.ident != self.list_region:
                log.debug("%s: ignoring list of region %s", self.id, ref.ident)
                return
            self._on_list(ref.ident, payload)
        else:
            self._reject("message", "bad-topic", f"unexpected topic {topic!r}")

    def _reject(self, what: str, reason: str, detail: str) -> None:
        self.counters[reason] += 1
        log.warning("%s: rejected %s: %s: %s", self.id, what, reason, detail)

    def _verified(self, what: str, cls: type, payload: bytes, topic_id: str) -> Any:
        cache = getattr(self.host, "verified", None)
        try:
            return intake.verified_cached(cache, cls, payload, topic_id, self.settings.trust)
        except Rejected as r:
            self._reject(what, r.reason, r.detail)
            return None

    # --- lists, profiles, commands ---------------------------------------------------------

    def _on_list(self, region: str, payload: bytes) -> None:
        if not payload:
            self.counters["withdrawn"] += 1
            log.warning(
                "%s: list of region %s withdrawn on the broker; keeping the last good one (%s)",
                self.id,
                region,
                f"v{self.server_list.version}" if self.server_list else "none",
            )
            return
        if payload == self.list_payload:
            return  # the same list again (a reconnect's retained copy): nothing new
        sl = self._verified(f"list for region {region}", ServerList, payload, region)
        if sl is None:
            return
        last = self.memory.list_versions.get(region)
        refused = intake.list_refusal(sl, last, self.server_list)
        if refused is not None:
            self._reject(f"list for region {region}", refused.reason, refused.detail)
            return
        self.server_list, self.list_payload = sl, payload
        self.memory.list_versions[region] = sl.version
        self.kod.reset()  # DENY/RSTR hold only until the list changes
        if self.state is not None:
            self.state.save_list_payload(payload)
        self._save_memory()
        if log.isEnabledFor(logging.INFO):  # a fleet of 10,000 pays this per list otherwise
            servers = ", ".join(f"{s.host}:{s.port}" for s in sl.servers)
            log.info(
                "%s: list v%d applied from region %s: %s", self.id, sl.version, region, servers
            )
        self._changed("new list")

    def _on_profile(self, payload: bytes) -> None:
        if not payload:
            self.counters["withdrawn"] += 1
            log.warning("%s: profile withdrawn on the broker; keeping the last good one", self.id)
            return
        if payload == self.profile_payload:
            return
        prof = self._verified("profile", Profile, payload, self.id)
        if prof is None:
            return
        refused = intake.profile_refusal(prof, self.memory.profile_version)
        if refused is not None:
            self._reject("profile", refused.reason, refused.detail)
            return
        self.profile, self.profile_payload = prof, payload
        self.memory.profile_version = prof.version
        if self.state is not None:
            self.state.save_profile_payload(payload)
        self._save_memory()
        log.info(
            "%s: profile v%d applied: region %s, time zone %s",
            self.id,
            prof.version,
            prof.region,
            prof.timezone,
        )
        if prof.region != self.list_region:
            self._follow(prof.region)
        self._changed("new profile")

    def _on_cmd(self, payload: bytes) -> None:
        if not payload:
            return
        # Commands carry no signature in the contract (only lists and profiles do): the
        # broker's ACL guards this topic, and the worst a forged one can do is one sync.
        try:
            cmd, _ = codec.decode(Command, payload, topic_id=self.id)
        except Rejected as r:
            self._reject("command", r.reason, r.detail)
            return
        since = None if self._last_cmd is None else time.monotonic() - self._last_cmd
        why = intake.command_ignored(
            cmd,
            since_last_obeyed_s=since,
            floor_s=self.settings.cmd_min_interval_s,
            clock_good=self.clock_known_good,
            wall_now=self.wall_clock(),
            max_age_s=self.settings.cmd_max_age_s,
        )
        if why is not None:
            self.counters["cmd-ignored"] += 1
            log.info("%s: resync command ignored: %s", self.id, why)
            return
        self._last_cmd = time.monotonic()
        delay = schedule.resync_delay(self.rng, self.resync_jitter_s)
        log.info("%s: resync requested by command; syncing in %.1f s", self.id, delay)
        self.counters["cmd-resync"] += 1
        self._sync_at(delay, "command")

    def _changed(self, why: str) -> None:
        if self.on_changed is not None:
            self.on_changed(why)
        if self.once or not self._startup_done:
            return  # --once syncs when its driver says; the start-up sync uses what is new
        self._sync_at(schedule.resync_delay(self.rng, self.resync_jitter_s), why)

    # --- syncing ---------------------------------------------------------------------------

    def _sync_at(self, delay_s: float, why: str) -> None:
        """Arm the sync timer for `delay_s` from now unless it is already due sooner."""
        if self._sync_due < 0:
            return  # stopped
        due = time.monotonic() + delay_s
        if self._sync_timer is not None:
            if self._sync_due <= due:
                return
            self._sync_timer.cancel()
        self._sync_due = due
        log.debug("%s: sync in %.3f s (%s)", self.id, delay_s, why)
        self._sync_timer = self.host.call_later(delay_s, self._sync_now)

    def _clock_behind_evidence(self) -> Optional[str]:
        """Why this host's clock is provably behind, or None (clock_evidence.py): what lets
        the broker link waive a certificate's dates. A synced clock is right."""
        if self.clock_known_good:
            return None
        floors = [release_floor()]
        if self.server_list is not None:  # verified when it was applied or loaded
            sl = self.server_list
            floors.append(Floor(sl.issued_at.timestamp(), f"the issue time of list v{sl.version}"))
        last_good = self.state.last_good_at() if self.state is not None else None
        if last_good is not None:
            floors.append(Floor(last_good, "this host's last good sync"))
        return behind_evidence(self.wall_clock(), floors)

    def sync_now(self) -> None:
        """Start a sync at once (tests, commands, the --once driver)."""
        self._sync_at(0.0, "requested")

    def _sync_now(self) -> None:
        self._sync_timer = None
        self._sync_due = float("inf")
        if self._syncing:
            self._sync_again = True
            return
        if self.server_list is None:
            log.info("%s: nothing to sync from yet (no list for region %s)", self.id, self.region)
            return
        job = job_for(
            self.id,
            self.server_list,
            self.profile,
            self.desired_timezone(),
            not self.clock_known_good,
        )
        self._syncing = True
        servers = [(s.host, s.port) for s in job.server_list.servers]
        try:
            start_probe(
                servers,
                self.probe_settings,
                self.kod,
                self.host,
                lambda result: self._probed(job, result),
                first_sync=job.first_sync,
            )
        except Exception as exc:  # a bug must end this sync, not leave it running forever
            self._sync_done(job, None, exc)

    def _probed(self, job: SyncJob, result: ProbeResult) -> None:
        measured_at = (time.time(), time.monotonic())  # before any backend moves the clock
        settings = self.settings

        def finish() -> SyncOutcome:
            return finish_sync(
                self.id,
                job,
                result,
                measured_at,
                backend=self.backend,
                tz_root=settings.tz_root,
                use_timedatectl=settings.use_timedatectl,
            )

        blocks = needs_worker(job, self.backend, settings.tz_root)
        run = self.host.run_blocking if blocks else run_inline
        run(finish, lambda r, e: self._sync_done(job, r, e))

    def _sync_done(
        self, job: SyncJob, outcome: Optional[SyncOutcome], exc: Optional[BaseException]
    ) -> None:
        self._syncing = False
        if exc is not None or outcome is None:
            log.error("%s: sync crashed: %r", self.id, exc)
            outcome = SyncOutcome(None, None, job.timezone, None, f"sync crashed: {exc!r}")
        report = build_report(
            self.id, job, outcome, self.wall_clock(), self.settings.software, time.monotonic()
        )
        payload = codec.encode(report)
        self.last_report, self.last_report_payload = report, payload
        self.reports_made += 1
        if report.ok:
            self._good_sync(report, outcome)
        else:
            self._failures += 1
            self.counters["sync-failures"] += 1
            log.warning(
                "%s: sync failed (list v%d): %s", self.id, report.list_version, report.error
            )
        if self.state is not None:
            self.state.save_report(payload)
        self._write_status()
        self.link.publish_report(payload)
        if self.on_report is not None:
            self.on_report(self, report)
        if self.once:
            return
        if self._sync_again:
            self._sync_again = False
            self._sync_at(0.0, "changed during sync")
        elif report.ok:
            self._sync_at(schedule.poll_delay(self.rng, self.poll_interval_s), "poll")
        else:
            delay = schedule.retry_delay(
                self.rng, self._failures, self.settings.retry_min_s, self.settings.retry_max_s
            )
            self._sync_at(delay, "retry")

    def _good_sync(self, report: Report, outcome: SyncOutcome) -> None:
        self._failures = 0
        residual = residual_offset(report)
        self._last_good = LastGood(time.monotonic(), residual, report)
        if self.state is not None:
            self.state.save_last_good(report, self.wall_clock())
        if not self.clock_known_good and residual <= self.probe_settings.panic_offset_s:
            self.clock_known_good = True
            self.link.clock_known_good()
        assert report.server is not None
        log.info(
            "%s: synced to %s:%d (list v%d): offset %+.6f s, delay %.6f s, %s",
            self.id,
            report.server.host,
            report.server.port,
            report.list_version,
            report.offset_s,
            report.delay_s,
            report.discipline,
        )
        if outcome.applied is not None and outcome.applied.detail:
            log.info("%s: %s: %s", self.id, self.backend.name, outcome.applied.detail)

    # --- status: on the broker and in status.json ------------------------------------------

    def _status_payload(self, state: str, session: int) -> bytes:
        return codec.encode(
            Status(
                schema="clock.status/1",
                agent=self.id,
                state=state,  # type: ignore[arg-type]
                software=self.settings.software,
                session=session,
                since=datetime.fromtimestamp(self.wall_clock(), timezone.utc),
                region=self.region,
            )
        )

    def local_status(self) -> dict[str, Any]:
        """What status.json says (see clockfleet.agent.state.local_status)."""
        return local_status(
            agent=self.id,
            region=self.region,
            report=self.last_report,
            last_good=self._last_good,
            poll_interval_s=self.poll_interval_s,
            trust_offset_s=self.settings.trust_offset_s,
            timezone=self.desired_timezone(),
            counters=self.counters,
            now=datetime.fromtimestamp(self.wall_clock(), timezone.utc),
            monotonic=time.monotonic(),
        )

    def _write_status(self) -> None:
        if self.state is None:
            return
        self.state.save_status(self.local_status())
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        if self._last_good is not None and not self.once:
            left = 2 * self.poll_interval_s - (time.monotonic() - self._last_good.monotonic)
            if left > 0:
                # Rewrite the file when the last good sync goes stale, so it never lies.
                self._stale_timer = self.host.call_later(left + 0.001, self._write_status)
