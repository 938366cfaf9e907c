"""What the discipline achieved, read right after it ran: the report's `clock` object.

Every backend: the kernel's state (adjtimex, read only). The chrony backend: chronyd's
tracking, once chronyd follows the list just handed to it (chrony_tracking.settled_tracking).
The timesyncd backend: timesyncd's own synchronisation flag. Nothing here raises: what could
not be read is said in `error`, and the rest is still reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from clockfleet.agent import kernel_clock
from clockfleet.agent.chrony_tracking import read_settled
from clockfleet.agent.clock_backends import ClockBackend, command_argv
from clockfleet.agent.timesyncd_state import read_timesyncd
from clockfleet.protocol.messages import ClockState, KernelClock, clip_text

# Longest wait for chronyd to take the list just handed over (its first update from it,
# the armed step with it): with `iburst` chronyd selects a new server within a few seconds.
CHRONY_SETTLE_S = 15.0


def kernel_state() -> tuple[Optional[KernelClock], Optional[str]]:
    timex, error = kernel_clock.read_timex_or_none()
    if timex is None:
        return None, error
    return (
        KernelClock(
            synchronised=timex.synchronised,
            maxerror_s=min(timex.maxerror_s, 1e6),
            esterror_s=min(timex.esterror_s, 1e6),
            status=timex.status,
        ),
        None,
    )


def chronyc_of(backend: ClockBackend) -> list[str]:
    """The chrony backend's chronyc command, with its socket when it has one."""
    argv = command_argv(getattr(backend, "chronyc", "chronyc"))
    sock = getattr(backend, "socket", None)
    return [*argv, "-h", str(sock)] if sock is not None else argv


def read_clock_state(
    backend: ClockBackend, servers: Sequence[str], settle_s: float = CHRONY_SETTLE_S
) -> ClockState:
    """The clock's state after `backend` ran with `servers` (the list's hosts)."""
    kernel, error = kernel_state()
    errors = [error] if error else []
    chrony = timesyncd = None
    if backend.name == "chrony":
        chrony, error = read_settled(chronyc_of(backend), servers, settle_s)
        if error:
            errors.append(error)
    elif backend.name == "timesyncd":
        timesyncd = read_timesyncd()
    return ClockState(
        kernel=kernel,
        chrony=chrony,
        timesyncd=timesyncd,
        error=clip_text("; ".join(errors)) if errors else None,
    )
