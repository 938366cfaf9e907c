"""When an agent's next sync is due: one timer, armed for the soonest reason.

Reasons arrive from everywhere (the start-up delay, a new list after its jitter, a resync
command, the poll interval after a good sync, the retry backoff after a failed one); the
timer keeps the soonest and fires the agent's sync once. schedule.py holds the delays.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Optional

from clockfleet.agent import schedule
from clockfleet.agent.agent_settings import AgentSettings
from clockfleet.agent.loop_host import Cancellable, ProbeHost

log = logging.getLogger("clockfleet.agent")


class SyncTimer:
    def __init__(
        self,
        agent_id: str,
        settings: AgentSettings,
        rng: random.Random,
        fire: Callable[[], None],
    ) -> None:
        self.id = agent_id
        self.settings = settings
        self.rng = rng
        self.fire = fire
        self.host: Optional[ProbeHost] = None
        self.started = False  # the start-up delay is over
        self.failures = 0  # syncs failed in a row
        self._timer: Optional[Cancellable] = None
        self._due = float("inf")  # monotonic; -1 once stopped

    def attach(self, host: ProbeHost) -> None:
        self.host = host

    def at(self, delay_s: float, why: str) -> None:
        """Sync `delay_s` from now, unless a sync is already due sooner."""
        if self._due < 0 or self.host is None:
            return  # stopped
        due = time.monotonic() + delay_s
        if self._timer is not None:
            if self._due <= due:
                return
            self._timer.cancel()
        self._due = due
        log.debug("%s: sync in %.3f s (%s)", self.id, delay_s, why)
        self._timer = self.host.call_later(delay_s, self._fired)

    def _fired(self) -> None:
        self._timer = None
        self._due = float("inf")
        self.fire()

    def startup_delay(self) -> float:
        """RFC 4330: a random delay before the first sync, so a rebooted data centre does not
        hit one server in the same second."""
        return schedule.startup_delay(self.rng, self.settings.startup_delay_s)

    def after_change(self, jitter_s: float, why: str) -> None:
        """A new list, profile or command: sync after 0..jitter_s (many hosts, one server)."""
        self.at(schedule.resync_delay(self.rng, jitter_s), why)

    def after_sync(self, ok: bool, again: bool, poll_interval_s: float) -> None:
        """The next sync after one ended: at once if something changed meanwhile, else the
        poll interval after a good one, the backoff after a failed one."""
        self.failures = 0 if ok else self.failures + 1
        if again:
            self.at(0.0, "changed during sync")
        elif ok:
            self.at(schedule.poll_delay(self.rng, poll_interval_s), "poll")
        else:
            delay = schedule.retry_delay(
                self.rng, self.failures, self.settings.retry_min_s, self.settings.retry_max_s
            )
            self.at(delay, "retry")

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._due = -1.0  # never armed again
