"""Who runs CPython's full garbage collections in a process hosting agents: the loop.

CPython starts a full collection whenever a quarter more objects have reached its oldest
generation. A process hosting 10,000 agents holds over a million objects, and the
short-lived ones of a list change (queries in flight, reports awaiting PUBACK) reach the
oldest generation within a second: that meant several full collections of ~0.5 s each per
list change, stopping the loop while every agent waited (measured: N=10,000 converged in
4.0-4.7 s with them, 2.4 s without). Agents' objects almost never form cycles (they die by
reference counting), so young collections stay automatic and the full one runs from the loop
on a quiet turn, at most every FULL_GC_INTERVAL_S, and after FULL_GC_OVERDUE_S even if no
turn is quiet. Nothing changes unless a loop runs; when the last running loop stops, the
threshold is as it was.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Optional

FULL_GC_INTERVAL_S = 60.0
FULL_GC_OVERDUE_S = 600.0
_NO_AUTOMATIC_FULL_GC = 1 << 30


class _Switch:
    """Process-wide: automatic full collections are off while any loop holds the switch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: Optional[tuple[int, int, int]] = None

    def hold(self) -> None:
        with self._lock:
            self._holders += 1
            if self._holders == 1:
                self._saved = gc.get_threshold()
                young, middle, _ = self._saved
                gc.set_threshold(young, middle, _NO_AUTOMATIC_FULL_GC)

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0 and self._saved is not None:
                gc.set_threshold(*self._saved)


_SWITCH = _Switch()


class LoopCollections:
    """One loop's part: start() when it begins, after_turn() after each turn, stop() at the end."""

    def __init__(self) -> None:
        self._held = False
        self._last = time.monotonic()

    def start(self) -> None:
        if not self._held:
            self._held = True
            _SWITCH.hold()

    def stop(self) -> None:
        if self._held:
            self._held = False
            _SWITCH.release()

    def after_turn(self, quiet: bool) -> None:
        """`quiet`: the turn waited and nothing came."""
        interval = FULL_GC_INTERVAL_S if quiet else FULL_GC_OVERDUE_S
        # count[2]: young collections since the last full one; none means nothing new can
        # have reached the oldest generation, as in an idle single agent
        if time.monotonic() - self._last >= interval and gc.get_count()[2] > 0:
            gc.collect()
            self._last = time.monotonic()
