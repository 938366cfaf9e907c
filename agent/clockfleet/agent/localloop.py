"""The least event loop a probe needs, for a caller that blocks until the probe ends.

A fleet of agents drives its probes from its own selector loop (fleet.py); a caller outside
one (`probe()`, benchmarks, tests) runs the same event-driven code on a `LocalLoop` of its
own. It offers the host interface a probe uses: `call_later`, `watch_readable`, `unwatch`,
`run_blocking` (inline here: there is no other thread to hand work to).
"""

from __future__ import annotations

import heapq
import itertools
import select
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Timer:
    """A callback due at a monotonic time; cancel() keeps it from running."""

    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], Any]) -> None:
        self.when = when
        self.fn: Callable[[], Any] = fn
        self.cancelled = False

    def cancel(self) -> None:
        # A cancelled timer stays in its loop's heap until its time; letting go of the
        # callback now frees what it holds (a probe's state) at once rather than then.
        self.cancelled = True
        self.fn = _nothing


def _nothing() -> None:
    return None


class TimerHeap:
    """Timers by due time, in the order they were set for equal times."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def add(self, delay_s: float, fn: Callable[[], Any]) -> Timer:
        t = Timer(time.monotonic() + max(0.0, delay_s), fn)
        heapq.heappush(self._heap, (t.when, next(self._seq), t))
        return t

    def next_due(self) -> float | None:
        """When the next live timer is due, or None if none is left."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def run_due(self, run: Callable[[Callable[[], Any]], None]) -> None:
        """run(fn) for every live timer due by now, in order."""
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _, _, t = heapq.heappop(self._heap)
            if not t.cancelled:
                run(t.fn)


def run_inline(fn: Callable[[], T], done: Callable[[T | None, BaseException | None], None]) -> None:
    """run_blocking() where there is no other thread: fn() now, then done(result, error)."""
    try:
        result = fn()
    except Exception as exc:
        done(None, exc)
    else:
        done(result, None)


class LocalLoop:
    def __init__(self) -> None:
        # poll, not select: a process may hold more than FD_SETSIZE descriptors
        self._poll = select.poll()
        self._readers: dict[int, Callable[[], Any]] = {}
        self._timers = TimerHeap()

    def call_later(self, delay_s: float, fn: Callable[[], Any]) -> Timer:
        return self._timers.add(delay_s, fn)

    def watch_readable(self, fd: int, fn: Callable[[], Any]) -> None:
        self._readers[fd] = fn
        self._poll.register(fd, select.POLLIN)

    def unwatch(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def run_blocking(
        self, fn: Callable[[], T], done: Callable[[T | None, BaseException | None], None]
    ) -> None:
        run_inline(fn, done)

    def run_until(self, predicate: Callable[[], bool]) -> None:
        """Run callbacks until predicate() holds. Something must be pending until then: a
        loop with no timer and no reader left would wait forever, so that raises."""
        while not predicate():
            due = self._timers.next_due()
            if due is None and not self._readers:
                raise RuntimeError("nothing left to wait for, and the awaited result never came")
            wait_ms = None if due is None else max(0.0, due - time.monotonic()) * 1000
            for fd, _events in self._poll.poll(wait_ms):
                fn = self._readers.get(fd)
                if fn is not None:
                    fn()
            self._timers.run_due(_call)


def _call(fn: Callable[[], Any]) -> None:
    fn()
