"""One agent: follow a region's signed server list and a profile, sync, report.

An `Agent` is a plain object with no thread of its own and no global state, driven by a host
(`loop_host.AgentHost`: `fleet.Fleet`) that fires its timers, runs its blocking work and
drives its broker link's socket. One process can hold one agent (the service, `--once`) or
thousands (the fleet simulator, the benchmarks).

Each stage has its object and its state; data flows forward through them:

    broker_link.py   BrokerLink: the connection; hands on each message
      -> in_force.py   InForce: lists and profiles accepted (intake.py's rules), remembered
      -> sync_timer.py SyncTimer: when the next sync is due (a change, a command, the poll)
      -> sync_run.py   SyncRun: probe, discipline, time zone, the report
      -> results.py    Results: the last report, the clock known good, status.json
      -> broker_link.py  the report out (report_delivery.py: backlog, late acks)

This module only wires them: it routes a message to its stage and a stage's result to the
next, and is what callers hold (`--once`, the service, tests, benchmarks).
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from clockfleet.agent import intake
from clockfleet.agent.agent_settings import AgentSettings
from clockfleet.agent.broker_link import BrokerLink, LinkEvents, LinkTiming
from clockfleet.agent.clock_backends import ClockBackend
from clockfleet.agent.clock_evidence import Floor, behind_evidence, release_floor
from clockfleet.agent.in_force import InForce
from clockfleet.agent.loop_host import AgentHost
from clockfleet.agent.report import SyncOutcome, job_for
from clockfleet.agent.results import Results
from clockfleet.agent.server_memory import KodMemory
from clockfleet.agent.state import StateDir, load_cached
from clockfleet.agent.sync_run import SyncRun
from clockfleet.agent.sync_timer import SyncTimer
from clockfleet.protocol import codec, topics
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.connection import ConnectionSettings, unguessable_client_id
from clockfleet.protocol.messages import Command, Report, Status

__all__ = ["Agent", "AgentSettings", "Observers"]

log = logging.getLogger("clockfleet.agent")


@dataclass
class Observers:
    """Who watches an agent from outside (the --once driver, tests, benchmarks); each is
    called on the loop thread."""

    on_report: Optional[Callable[[Agent, Report], None]] = None
    on_changed: Optional[Callable[[str], None]] = None  # "new list", "new profile"
    on_online: Optional[Callable[[], None]] = None
    on_acked: Optional[Callable[[], None]] = None
    on_unreachable: Optional[Callable[[str], None]] = None


@dataclass(frozen=True)
class AgentTopics:
    profile: str
    cmd: str
    lists: str  # the prefix of every region list's topic


class Agent:
    """See the module docstring. Only the host's loop thread may call its methods."""

    def __init__(
        self,
        settings: AgentSettings,
        conn: ConnectionSettings,
        *,
        backend: ClockBackend,
        kod: Optional[KodMemory] = None,
        state: Optional[StateDir] = None,
        rng: Optional[random.Random] = None,
        wall_clock: Callable[[], float] = time.time,
        once: bool = False,
        client_id: Optional[str] = None,
    ) -> None:
        self.settings = settings
        self.id = settings.agent_id
        self.conn = conn
        self.state = state
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.once = once  # --once: no status, no schedule of its own (once.py drives it)
        self.host: Optional[AgentHost] = None
        self.observers = Observers()
        self.counters: collections.Counter[str] = collections.Counter()
        self.topics = AgentTopics(
            topics.profile_topic(conn.prefix, self.id),
            topics.cmd_topic(conn.prefix, self.id),
            f"{conn.prefix}/regions/",
        )
        self.in_force = InForce(settings, state, self.counters)
        self.runner = SyncRun(settings, backend, kod, wall_clock)
        self.runner.counters = self.counters
        self.runner.clock_behind = self._clock_behind_evidence  # the broker's TLS rule
        self.results = Results(
            settings,
            self.in_force,
            state,
            self.counters,
            wall_clock,
            self.runner.probe_settings.panic_offset_s,
            backend.name,
        )
        self.timer = SyncTimer(self.id, settings, self.rng, self._sync_due)
        self._last_cmd: Optional[float] = None  # monotonic time of the last command obeyed
        self.link = self._make_link(client_id)

    def _make_link(self, client_id: Optional[str]) -> BrokerLink:
        events = LinkEvents(
            online=lambda: self._notify(self.observers.on_online),
            message=self._on_message,
            session=self._session_moved,
            report_acked=self._report_acked,
            unreachable=lambda why: self._notify(self.observers.on_unreachable, why),
            status_payload=self._status_payload,
            clock_behind=self._clock_behind_evidence,
        )
        s = self.settings
        timing = LinkTiming(s.reconnect_min_s, s.reconnect_max_s, s.keepalive_s, self.rng)
        # A persistent session (service): QoS 1 reports in flight survive a reconnect. --once
        # uses its own client id and a clean session.
        base = f"clockfleet-agent-{self.id}" + ("-once" if self.once else "")
        return BrokerLink(
            self.id,
            self.conn,
            events,
            timing,
            self.counters,
            announce=not self.once,
            client_id=client_id or unguessable_client_id(base, self.conn.password),
            clean_session=self.once,
        )

    # --- what callers read (each stage owns it) ---------------------------------------------

    @property
    def prefix(self) -> str:
        return self.conn.prefix

    @property
    def backend(self) -> ClockBackend:
        return self.runner.backend

    @property
    def kod(self) -> KodMemory:
        return self.runner.kod

    @property
    def server_list(self) -> Any:
        return self.in_force.server_list

    @property
    def profile(self) -> Any:
        return self.in_force.profile

    @property
    def list_region(self) -> Optional[str]:
        return self.in_force.list_region

    @property
    def region(self) -> Optional[str]:
        return self.in_force.region

    @property
    def last_report(self) -> Optional[Report]:
        return self.results.last_report

    @property
    def last_report_payload(self) -> Optional[bytes]:
        return self.results.last_report_payload

    @property
    def reports_made(self) -> int:
        return self.results.made

    @property
    def reports_acked(self) -> int:
        return self.results.acked

    @property
    def clock_known_good(self) -> bool:
        return self.results.clock_known_good

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def closed(self) -> bool:
        return self.link.closed

    def local_status(self) -> dict[str, Any]:
        return self.results.local_status()

    # --- lifecycle -------------------------------------------------------------------------

    def attach(self, host: AgentHost) -> None:
        self.host = host
        self.link.attach(host)
        self.runner.attach(host)
        self.timer.attach(host)
        self.results.attach(host)

    def start(self) -> None:
        """Load the cache, connect, and arm the start-up delay (RFC 4330: randomised)."""
        assert self.host is not None, "attach() the agent to a host first"
        if self.state is not None:  # the last good profile, list and report, verified again
            cached = load_cached(
                self.state,
                self.id,
                self.settings.trust,
                with_report=not self.once,
                wall_now=self.wall_clock(),
                trust_offset_s=self.settings.trust_offset_s,
            )
            self.in_force.load(self.state.load_remembered(), cached)
            self.results.load(cached)
        self._follow(self.in_force.region)
        self.link.start(self.in_force.memory.session)
        if self.once:
            return  # the --once driver says when to sync
        self.results.write_status()
        delay = self.timer.startup_delay()
        if delay > 0:
            log.info("%s: start-up delay %.1f s before the first sync", self.id, delay)
        self.host.call_later(delay, self._startup_elapsed)

    def stop(self) -> None:
        """Clean shutdown: the link says `offline` with this session and disconnects."""
        self.timer.stop()
        self.results.stop()
        self.link.stop()

    def _startup_elapsed(self) -> None:
        self.timer.started = True
        if self.in_force.server_list is not None:
            self.timer.at(0.0, "start-up")
        else:
            log.info("%s: no server list yet; waiting for region %s", self.id, self.region)

    def _follow(self, region: Optional[str]) -> None:
        """Hold the topics this agent reads: its profile, its region's list, its commands."""
        self.in_force.list_region = region
        wanted = [self.topics.profile]
        if region is not None:
            wanted.append(topics.servers_topic(self.prefix, region))
        if not self.once:
            wanted.append(self.topics.cmd)
        self.link.hold(wanted)

    # --- the link's events ------------------------------------------------------------------

    def _notify(self, fn: Optional[Callable[..., None]], *args: Any) -> None:
        if fn is not None:
            fn(*args)

    def _session_moved(self, session: int) -> None:
        self.in_force.memory.session = session
        self.in_force.save_memory()

    def _report_acked(self) -> None:
        self.results.acked += 1
        self._notify(self.observers.on_acked)

    def _on_message(self, topic: str, payload: bytes) -> None:
        cache = self.host.verified if self.host is not None else None
        if topic == self.topics.profile:
            if self.in_force.take_profile(payload, cache):
                if self.in_force.region != self.in_force.list_region:
                    self._follow(self.in_force.region)
                self._changed("new profile")
        elif topic == self.topics.cmd:
            self._on_cmd(payload)
        elif topic.startswith(self.topics.lists):
            try:
                ref = topics.parse_topic(self.prefix, topic)
            except topics.TopicError as exc:
                self.in_force.reject("list", "bad-topic", str(exc))
                return
            if ref.ident != self.in_force.list_region:
                log.debug("%s: ignoring list of region %s", self.id, ref.ident)
            elif self.in_force.take_list(ref.ident, payload, cache):
                self.kod.reset()  # DENY/RSTR hold only until the list changes
                self._changed("new list")
        else:
            self.in_force.reject("message", "bad-topic", f"unexpected topic {topic!r}")

    def _on_cmd(self, payload: bytes) -> None:
        if not payload:
            return
        # Commands carry no signature in the contract (only lists and profiles do): the
        # broker's ACL guards this topic, and the worst a forged one can do is one sync.
        try:
            cmd, _ = codec.decode(Command, payload, topic_id=self.id)
        except Rejected as r:
            self.in_force.reject("command", r.reason, r.detail)
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
        log.info("%s: resync requested by command", self.id)
        self.counters["cmd-resync"] += 1
        self.timer.after_change(self.in_force.resync_jitter_s, "command")

    def _changed(self, why: str) -> None:
        self._notify(self.observers.on_changed, why)
        if self.once or not self.timer.started:
            return  # --once syncs when its driver says; the start-up sync uses what is new
        self.timer.after_change(self.in_force.resync_jitter_s, why)

    # --- syncing ---------------------------------------------------------------------------

    def sync_now(self) -> None:
        """Start a sync at once (tests, commands, the --once driver)."""
        self.timer.at(0.0, "requested")

    def _sync_due(self) -> None:
        sl = self.in_force.server_list
        if sl is None:
            log.info("%s: nothing to sync from yet (no list for region %s)", self.id, self.region)
            return
        first_sync = not self.clock_known_good
        job = job_for(
            self.id, sl, self.in_force.profile, self.in_force.desired_timezone(), first_sync
        )
        self.runner.start(job, self._synced)

    def _synced(self, report: Report, payload: bytes, outcome: SyncOutcome) -> None:
        if self.results.record(report, payload, outcome):
            self.link.clock_known_good()
        self.results.write_status(rearm=not self.once)
        self.link.publish_report(payload)
        self._notify(self.observers.on_report, self, report)
        if not self.once:
            again = self.runner.again
            self.runner.again = False
            self.timer.after_sync(report.ok, again, self.in_force.poll_interval_s)

    def _clock_behind_evidence(self) -> Optional[str]:
        """Why this host's clock is provably behind, or None (clock_evidence.py): what lets
        the broker link waive a certificate's dates. A synced clock is right."""
        if self.clock_known_good:
            return None
        floors = [release_floor()]
        sl = self.in_force.server_list
        if sl is not None:  # verified when it was applied or loaded
            floors.append(Floor(sl.issued_at.timestamp(), f"the issue time of list v{sl.version}"))
        last_good = self.state.last_good_at() if self.state is not None else None
        if last_good is not None:
            floors.append(Floor(last_good, "this host's last good sync"))
        return behind_evidence(self.wall_clock(), floors)

    # --- status on the broker ------------------------------------------------------------

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
