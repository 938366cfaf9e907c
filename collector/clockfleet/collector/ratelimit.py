"""Bounds on what a flood can do to the collector: per-topic token buckets that drop a
topic's excess before decoding, and log lines at most once per key per interval.

A flood of messages must not starve the loop or fill the log: the counters (in FleetState)
count every message, the log says one line per reason per LOG_EVERY_S seconds, and the
token buckets start full on every connection so that a retained snapshot (one message per
topic) is never limited.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger("clockfleet.collector")

LOG_EVERY_S = 10.0


class RateLimitedLog:
    """At most one line per key per interval, saying how many were left unsaid."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(
        self, key: str, msg: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg += f" (and {skipped} more like it not logged)"
        log.warning(msg, *args, exc_info=exc_info)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per topic: `burst` messages at once, `per_s` a second sustained."""

    burst: int = 5
    per_s: float = 1.0

    def __post_init__(self) -> None:
        if self.burst < 1 or not self.per_s > 0:
            raise ValueError("a rate limit needs burst >= 1 and per_s > 0")


DEFAULT_RATE_LIMIT = RateLimit()


class RateLimiter:
    """Per-topic token buckets, keyed by the raw topic bytes (before any decoding).

    Memory is bounded: past `max_keys` buckets, those that have refilled (and so say nothing
    a fresh one would not) are forgotten, and if that frees too little, all are. Forgetting
    only ever lets messages through: an agent does not lose its reports to a flood of others.
    """

    def __init__(self, limit: RateLimit, max_keys: int = 262_144) -> None:
        self.burst = float(limit.burst)
        self.per_s = limit.per_s
        self.max_keys = max_keys
        self._buckets: dict[bytes, list[float]] = {}  # topic -> [tokens, last time]

    def reset(self) -> None:
        self._buckets = {}

    def allow(self, key: bytes, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.per_s
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _prune(self, now: float) -> None:
        full = self.burst
        per_s = self.per_s
        kept = {k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * per_s < full}
        self._buckets = kept if len(kept) < self.max_keys * 3 // 4 else {}
