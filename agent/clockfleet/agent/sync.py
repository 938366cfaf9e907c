"""One sync, on a worker thread: probe the list, hand the result to the clock backend, set
the time zone. Touches only its arguments and I/O, never the agent's state; whatever fails
becomes part of the outcome, never an exception (a backend bug must not stop an agent
keeping time)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from clockfleet.agent.report import SyncJob, SyncOutcome

log = logging.getLogger("clockfleet.agent")


def run_sync(
    agent_id: str,
    job: SyncJob,
    *,
    probe_fn: Callable[..., Any],
    probe_settings: Any,
    kod: Any,
    backend: Any,
    tz_root: Optional[Path],
    use_timedatectl: Optional[bool],
) -> SyncOutcome:
    servers = [(s.host, s.port) for s in job.server_list.servers]
    result = probe_fn(servers, probe_settings, kod, first_sync=job.first_sync)
    measured_at = (time.time(), time.monotonic())  # before any backend moves the clock
    applied = None
    error = None
    if result.ok:
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
