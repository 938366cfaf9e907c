"""The `system` backend: step (clock_settime) or slew (adjtime) the kernel clock directly."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from clockfleet.agent.clock_backends import (
    CAP_SYS_TIME,
    DEFAULT_STEP_THRESHOLD_S,
    Applied,
    Server,
    fmt_server,
)

log = logging.getLogger(__name__)


def choose_adjustment(offset_s: float, step_threshold_s: float = DEFAULT_STEP_THRESHOLD_S) -> str:
    """'system-step' past the threshold, else 'system-slew' (the report's discipline)."""
    return "system-step" if abs(offset_s) > step_threshold_s else "system-slew"


def has_capability(status_text: str, bit: int = CAP_SYS_TIME) -> bool:
    """Whether the CapEff line of a /proc/PID/status text has capability `bit`."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


class ClockSyscalls(Protocol):
    """The only code that changes the kernel clock; injectable so tests never do."""

    def step(self, offset_s: float) -> None: ...
    def slew(self, offset_s: float) -> None: ...


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class KernelClock:
    """CLOCK_REALTIME via clock_settime (step) and adjtime(3) (slew at 500 ppm)."""

    def __init__(self) -> None:
        # The process's own C library (kernel_clock.py says why not find_library).
        self._libc = ctypes.CDLL(None, use_errno=True)

    def step(self, offset_s: float) -> None:
        # Read and set in one go; the gap between the two calls is nanoseconds.
        now_ns = time.clock_gettime_ns(time.CLOCK_REALTIME)
        time.clock_settime_ns(time.CLOCK_REALTIME, now_ns + round(offset_s * 1e9))

    def slew(self, offset_s: float) -> None:
        # glibc normalises a negative tv_usec; it turns this into ADJ_OFFSET_SINGLESHOT.
        delta = _Timeval(0, round(offset_s * 1e6))
        if self._libc.adjtime(ctypes.byref(delta), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


@dataclass
class SystemBackend:
    step_threshold_s: float = DEFAULT_STEP_THRESHOLD_S
    syscalls: ClockSyscalls | None = None
    proc_status: str | Path = "/proc/self/status"
    name: str = field(default="system", init=False)
    blocking: bool = field(default=True, init=False)  # kept off the loop, as the others

    def __post_init__(self) -> None:
        if not self.step_threshold_s > 0:
            raise ValueError("step_threshold_s must be > 0")

    def check(self) -> str | None:
        try:
            text = Path(self.proc_status).read_text()
        except OSError as e:
            return f"system backend: cannot read {self.proc_status}: {e.strerror or e}"
        if not has_capability(text, CAP_SYS_TIME):
            return (
                "system backend: this process lacks CAP_SYS_TIME and cannot set the clock "
                "(run as root or grant it: AmbientCapabilities=CAP_SYS_TIME in the unit)"
            )
        return None

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        how = choose_adjustment(offset_s, self.step_threshold_s)
        syscalls = self.syscalls if self.syscalls is not None else KernelClock()
        try:
            if how == "system-step":
                syscalls.step(offset_s)
            else:
                syscalls.slew(offset_s)
        except OSError as e:
            reason = e.strerror or str(e)
            if e.errno == errno.EPERM:
                reason += " (needs CAP_SYS_TIME)"
            return Applied(how, False, f"{how[7:]} by {offset_s:+.6f} s failed: {reason}")
        verb = "stepped" if how == "system-step" else "slewing"
        return Applied(how, True, f"{verb} clock by {offset_s:+.6f} s ({fmt_server(chosen)})")


# --- factory ------------------------------------------------------------------------------
