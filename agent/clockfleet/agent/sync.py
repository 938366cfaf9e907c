"""The second half of a sync, once the probe has its result: hand it to the clock backend,
set the time zone. Touches only its arguments and I/O, never the agent's state; whatever
fails becomes part of the outcome, never an exception (a backend bug must not stop an agent
keeping time). It runs on a worker when it does I/O (`needs_worker`), on the loop when not
(the observe backend and no time zone: a fleet of agents then syncs with no thread hop)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from clockfleet.agent.choice import ProbeResult
from clockfleet.agent.clock_backends import ClockBackend
from clockfleet.agent.report import SyncJob, SyncOutcome

log = logging.getLogger("clockfleet.agent")


def needs_worker(job: SyncJob, backend: ClockBackend, tz_root: Optional[Path]) -> bool:
    """Whether finish_sync may block (a backend that runs commands or writes files, or a
    time zone to set), so that it must not run on the agent's loop."""
    return backend.blocking or (job.timezone is not None and tz_root is not None)


def finish_sync(
    agent_id: str,
    job: SyncJob,
    result: ProbeResult,
    measured_at: tuple[float, float],
    *,
    backend: ClockBackend,
    tz_root: Optional[Path],
    use_timedatectl: Optional[bool],
) -> SyncOutcome:
    """`measured_at`: (wall, monotonic) time the probe ended, taken before any backend moves
    the clock."""
    servers = [(s.host, s.port) for s in job.server_list.servers]
    applied = None
    error = None
    if result.chosen is not None and result.chosen.sample is not None:
        chosen = (result.chosen.host, result.chosen.port)
        try:
            applied = backend.apply(servers, chosen, result.chosen.sample.offset_s)
        except Exception as exc:
            log.exception("%s: clock backend %s failed", agent_id, backend.name)
            error = f"backend {backend.name} raised {type(exc).__name__}: {exc}"
        if applied is not None and not applied.ok:
            error = f"backend {backend.name}: {applied.detail}"
    else:
        error = result.note or "no server in the list gave a valid sync"
    tz, tz_error = job.timezone, None
    if job.timezone is not None and tz_root is not None:
        from clockfleet.agent import timezone as tzmod

        try:
            done = tzmod.set_timezone(job.timezone, tz_root, use_timedatectl)
            if not done.startswith("already"):
                log.info("%s: time zone %s: %s", agent_id, job.timezone, done)
        except tzmod.TimezoneError as exc:
            tz_error = f"time zone {job.timezone} not set: {exc}"
            log.warning("%s: %s", agent_id, tz_error)  # local admins read the journal
            tz = tzmod.current_timezone(tz_root)
    return SyncOutcome(result, applied, tz, tz_error, error, measured_at)
