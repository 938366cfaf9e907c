"""The kernel's clock discipline state, read with adjtimex(2) in read-only mode.

adjtimex with `modes = 0` changes nothing and needs no privilege (node_exporter's timex
collector reads the same, as `node_timex_*`). Its return value is the clock state:
TIME_ERROR (5) means the kernel does not consider the clock synchronised (STA_UNSYNC, or a
PPS problem); `maxerror` grows by 500 ppm of elapsed time until a daemon resets it, and
reaches 16 s when nobody does. chronyd maintains these only with `rtcsync`; timesyncd and
ntpd always do (docs/collector.md). Read through ctypes on the C library: no module of
Python's standard library exposes adjtimex, and no maintained package is worth a dependency
for one read-only call (docs/decisions.md).
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from typing import Optional

TIME_ERROR = 5
STA_UNSYNC = 0x0040
# The kernel's frequency tolerance, 500 ppm scaled by 2^16 (MAXFREQ_SCALED): a constant of
# every Linux kernel, which tells a reader that the structure's layout was read right.
TOLERANCE_500_PPM = 500 << 16


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex of <sys/timex.h> on Linux with a 64-bit `long` (amd64, arm64): natural
    # alignment places the padding after `modes`, `status` and `shift` as the C compiler does.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True)
class Timex:
    state: int  # adjtimex's return value (TIME_OK 0 .. TIME_ERROR 5)
    status: int  # STA_* bits
    maxerror_s: float
    esterror_s: float
    tolerance: int
    time_s: float  # the kernel's time when it answered

    @property
    def synchronised(self) -> bool:
        return self.state != TIME_ERROR


class KernelClockError(Exception):
    """adjtimex could not be read here (not Linux, no C library, refused)."""


_adjtimex = None


def _function() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    global _adjtimex
    if _adjtimex is None:
        if not sys.platform.startswith("linux"):
            raise KernelClockError(f"adjtimex is Linux only, not {sys.platform}")
        # The interpreter's own symbols, its C library's among them: ctypes.util's
        # find_library would run `ldconfig -p` in a child process and cost the agent 0.3 MB.
        try:
            fn = ctypes.CDLL(None, use_errno=True).adjtimex
        except (OSError, AttributeError) as exc:
            raise KernelClockError(f"no adjtimex in this process's C library: {exc}") from None
        fn.argtypes = [ctypes.POINTER(_Timex)]
        fn.restype = ctypes.c_int
        _adjtimex = fn
    return _adjtimex


def read_timex() -> Timex:
    """One read-only adjtimex call (modes 0: nothing is set). Raises KernelClockError."""
    if ctypes.sizeof(ctypes.c_long) != 8:
        raise KernelClockError("adjtimex layout known for 64-bit Linux only")
    buf = _Timex()
    buf.modes = 0  # read only: the kernel changes nothing, whatever the caller's privileges
    state = _function()(ctypes.byref(buf))
    if state < 0:
        errno = ctypes.get_errno()
        raise KernelClockError(f"adjtimex failed: errno {errno}")
    return Timex(
        state=state,
        status=int(buf.status) & 0xFFFF,
        maxerror_s=max(int(buf.maxerror), 0) / 1e6,  # microseconds, in every mode
        esterror_s=max(int(buf.esterror), 0) / 1e6,
        tolerance=int(buf.tolerance),
        time_s=buf.time.tv_sec + buf.time.tv_usec / (1e9 if buf.status & 0x2000 else 1e6),
    )


def read_timex_or_none() -> tuple[Optional[Timex], Optional[str]]:
    """(the kernel's state, None) or (None, why it could not be read)."""
    try:
        return read_timex(), None
    except KernelClockError as exc:
        return None, str(exc)
