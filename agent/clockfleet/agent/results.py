"""What an agent's syncs gave: the last report, the last good sync, whether the host's clock
is known good, and status.json, which a PBX reads before a time-of-day decision.

`record()` takes each finished sync's report; `write_status()` keeps status.json true,
rewriting it when the last good sync goes stale so the file never vouches for a clock it
can no longer vouch for.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Optional

from clockfleet.agent.agent_settings import AgentSettings
from clockfleet.agent.in_force import InForce
from clockfleet.agent.loop_host import Cancellable, ProbeHost
from clockfleet.agent.report import SyncOutcome
from clockfleet.agent.state import Cached, LastGood, StateDir, local_status, residual_offset
from clockfleet.protocol.messages import Report

log = logging.getLogger("clockfleet.agent")


class Results:
    def __init__(
        self,
        settings: AgentSettings,
        in_force: InForce,
        state: Optional[StateDir],
        counters: collections.Counter[str],
        wall_clock: Callable[[], float],
        panic_offset_s: float,
        backend_name: str,
    ) -> None:
        self.id = settings.agent_id
        self.backend_name = backend_name
        self.settings = settings
        self.in_force = in_force
        self.state = state
        self.counters = counters
        self.wall_clock = wall_clock
        self.panic_offset_s = panic_offset_s
        self.host: Optional[ProbeHost] = None
        self.last_report: Optional[Report] = None
        self.last_report_payload: Optional[bytes] = None
        self.last_good: Optional[LastGood] = None
        self.made = 0  # reports made
        self.acked = 0  # reports the broker acknowledged
        # A good sync since start left this host's clock within the panic limit: from then
        # on the limit stands, certificates' dates are checked and command ages judged.
        self.clock_known_good = False
        self._stale_timer: Optional[Cancellable] = None

    def attach(self, host: ProbeHost) -> None:
        self.host = host

    def load(self, cached: Cached) -> None:
        self.last_report, self.last_report_payload = cached.report, cached.report_payload
        self.last_good = cached.last_good

    def record(self, report: Report, payload: bytes, outcome: SyncOutcome) -> bool:
        """One finished sync; True when it is the first to leave the clock known good."""
        self.last_report, self.last_report_payload = report, payload
        self.made += 1
        newly_good = False
        if report.ok:
            residual = residual_offset(report)
            self.last_good = LastGood(time.monotonic(), residual, report)
            if self.state is not None:
                self.state.save_last_good(report, self.wall_clock())
            if not self.clock_known_good and residual <= self.panic_offset_s:
                self.clock_known_good = newly_good = True
            self._log_good(report, outcome)
        else:
            self.counters["sync-failures"] += 1
            log.warning(
                "%s: sync failed (list v%d): %s", self.id, report.list_version, report.error
            )
        command = outcome.zone.command if outcome.zone is not None else None
        if command is not None:  # run in this sync: counted once (reports carry it on)
            self.counters["zone-commands"] += 1
            if command.error is not None:
                self.counters["zone-command-failures"] += 1
        if self.state is not None:
            self.state.save_report(payload)
        return newly_good

    def _log_good(self, report: Report, outcome: SyncOutcome) -> None:
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
            log.info("%s: %s: %s", self.id, self.backend_name, outcome.applied.detail)

    # --- status.json ------------------------------------------------------------------------

    def local_status(self) -> dict[str, Any]:
        """What status.json says (see clockfleet.agent.state.local_status)."""
        return local_status(
            agent=self.id,
            region=self.in_force.region,
            report=self.last_report,
            last_good=self.last_good,
            poll_interval_s=self.in_force.poll_interval_s,
            trust_offset_s=self.settings.trust_offset_s,
            timezone=self.in_force.desired_timezone(),
            counters=self.counters,
            now=datetime.fromtimestamp(self.wall_clock(), timezone.utc),
            monotonic=time.monotonic(),
        )

    def write_status(self, rearm: bool = True) -> None:
        """Write status.json; `rearm`: and again when the last good sync goes stale (the
        service; `--once` writes it once)."""
        if self.state is None:
            return
        self.state.save_status(self.local_status())
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        if self.last_good is not None and rearm and self.host is not None:
            interval = self.in_force.poll_interval_s
            left = 2 * interval - (time.monotonic() - self.last_good.monotonic)
            if left > 0:
                self._stale_timer = self.host.call_later(left + 0.001, self.write_status)

    def stop(self) -> None:
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
