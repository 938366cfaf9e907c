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
from clockfleet.agent.clock_backends import Applied, ClockBackend, Server
from clockfleet.agent.clock_state import CHRONY_SETTLE_S, read_clock_state
from clockfleet.agent.report import SyncJob, SyncOutcome
from clockfleet.agent.time_setters import scan
from clockfleet.agent.zone_change import ZoneSettings, apply_zone
from clockfleet.protocol.messages import TimeSetter, clip_text

log = logging.getLogger("clockfleet.agent")


def needs_worker(
    job: SyncJob,
    backend: ClockBackend,
    tz_root: Optional[Path],
    time_setters_root: Optional[Path] = None,
) -> bool:
    """Whether finish_sync may block (a backend that runs commands or writes files, a time
    zone to set, other time setters to look for), so that it must not run on the agent's
    loop. Reading the host's zone file back (a few KB, local) and the kernel's timex (one
    system call) stays on the loop."""
    return (
        backend.blocking
        or (job.timezone is not None and tz_root is not None)
        or time_setters_root is not None
    )


def nts_for_backend(
    backend: ClockBackend, job: SyncJob, servers: list[Server], chosen: Server
) -> tuple[list[Server], Optional[str]]:
    """What a backend may be handed of a list with NTS servers: chrony gets them marked
    (`nts_sources`) and authenticates itself; timesyncd cannot speak NTS, so it never sees
    one (it would ask it in plain NTP), and when NTS gave the sync it is not applied."""
    nts = {(s.host, s.port): s.nts_ke_port or 4460 for s in job.server_list.servers if s.nts}
    if hasattr(backend, "nts_sources"):
        backend.nts_sources = nts
    if not nts or backend.name != "timesyncd":
        return servers, None
    if chosen in nts:
        why = "timesyncd cannot speak NTS: the NTS server that gave the sync is not handed to it"
        return servers, f"{why} (the chrony backend can)"
    return [s for s in servers if s not in nts], None


def finish_sync(
    agent_id: str,
    job: SyncJob,
    result: ProbeResult,
    measured_at: tuple[float, float],
    *,
    backend: ClockBackend,
    zone_settings: ZoneSettings,
    settle_s: float = CHRONY_SETTLE_S,
    time_setters_root: Optional[Path] = None,
) -> SyncOutcome:
    """`measured_at`: (wall, monotonic) time the probe ended, taken before any backend moves
    the clock."""
    servers = [(s.host, s.port) for s in job.server_list.servers]
    applied = None
    error = None
    if result.chosen is not None and result.chosen.sample is not None:
        chosen = (result.chosen.host, result.chosen.port)
        servers, refused = nts_for_backend(backend, job, servers, chosen)
        try:
            if refused is not None:
                applied = Applied(backend.name, False, refused)
            else:
                applied = backend.apply(servers, chosen, result.chosen.sample.offset_s)
        except Exception as exc:
            log.exception("%s: clock backend %s failed", agent_id, backend.name)
            error = f"backend {backend.name} raised {type(exc).__name__}: {exc}"
        if applied is not None and not applied.ok:
            error = f"backend {backend.name}: {applied.detail}"
    else:
        error = result.note or "no server in the list gave a valid sync"
    ok = applied is not None and applied.ok
    # What the discipline achieved, read after it ran (chronyd's tracking once it follows
    # the list just handed over): what alerts judge, not the probe's offset before it.
    clock = read_clock_state(backend, [h for h, _ in servers] if ok else [], settle_s if ok else 0)
    zone = apply_zone(agent_id, job.timezone, zone_settings)
    setters = (
        None
        if time_setters_root is None
        else other_time_setters(agent_id, time_setters_root, backend.name)
    )
    return SyncOutcome(
        result,
        applied,
        zone.timezone,
        zone.error,
        error,
        measured_at,
        clock=clock,
        zone=zone,
        time_setters=setters,
    )


def other_time_setters(agent_id: str, root: Path, backend: str) -> list[TimeSetter]:
    """What else sets this host's clock, for the report; logged while there is any."""
    found = scan(root, backend)
    if found.found:
        log.warning(
            "%s: other time setters on this host (remove them: docs/hosts.md): %s",
            agent_id,
            ", ".join(f"{f.program} ({f.source})" for f in found.found),
        )
    if found.unread:
        log.debug("%s: time setters: not allowed to read %s", agent_id, ", ".join(found.unread))
    return [
        TimeSetter(kind=f.kind, program=f.program, source=clip_text(f.source) or "")  # type: ignore[arg-type]
        for f in found.found
    ]
