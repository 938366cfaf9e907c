"""What one agent remembers of its NTP servers between probes: kiss-o'-death and usual delays.

Each agent owns one `KodMemory` (nothing global): the probe asks it whether to skip a server
and how long a server may stay silent before the next is asked too, and tells it what each
server answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from clockfleet.agent.choice import Attempt
from clockfleet.ntp.checks import KISS_RATE, KISS_REFUSALS, ProbeSettings, kod_outcome


class KodMemory:
    """What one agent remembers of its servers, keyed by (host, port) as the list names them.

    Kiss-o'-death: RATE skips the server for a back-off that doubles on every RATE (capped);
    a good answer forgets it. DENY/RSTR skip it until reset(), which the agent calls when its
    list changes. Usual delay: the last round trip a server answered in, so that the stagger
    before asking the next server is never shorter than a far server's usual answer.
    """

    def __init__(
        self,
        rate_backoff_s: float = 16.0,
        rate_backoff_max_s: float = 1024.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._initial = rate_backoff_s
        self._cap = rate_backoff_max_s
        self._clock = clock
        self._lock = threading.Lock()
        self._refused: dict[tuple[str, int], str] = {}
        self._rate: dict[tuple[str, int], tuple[float, float]] = {}  # until, backoff
        self._delay: dict[tuple[str, int], float] = {}  # last round trip, seconds

    def reset(self) -> None:
        with self._lock:
            self._refused.clear()
            self._rate.clear()

    def skip(self, host: str, port: int) -> Attempt | None:
        """The Attempt to report instead of asking this server, or None to ask it."""
        key = (host, port)
        with self._lock:
            code = self._refused.get(key)
            if code is not None:
                return Attempt(
                    host,
                    port,
                    kod_outcome(code),
                    f"skipped: {code} received, not asked again until the list changes",
                )
            backoff = self._rate.get(key)
            if backoff is not None:
                left = backoff[0] - self._clock()
                if left > 0:
                    return Attempt(
                        host,
                        port,
                        "kod-rate",
                        f"skipped: RATE received, backing off {backoff[1]:g} s ({left:.1f} s left)",
                    )
        return None

    def record(self, attempt: Attempt, kiss: str | None) -> None:
        key = (attempt.host, attempt.port)
        with self._lock:
            if kiss in KISS_REFUSALS:
                self._refused[key] = kiss
            elif kiss == KISS_RATE:
                previous = self._rate.get(key)
                backoff = self._initial if previous is None else min(previous[1] * 2, self._cap)
                self._rate[key] = (self._clock() + backoff, backoff)
            elif attempt.outcome == "ok":
                self._rate.pop(key, None)
            if attempt.sample is not None:
                self._delay[key] = attempt.sample.delay_s

    def stagger_s(self, host: str, port: int, settings: ProbeSettings) -> float:
        """How long this server may stay silent before the next one is asked as well."""
        with self._lock:
            usual = self._delay.get((host, port), 0.0)
        return min(settings.timeout_s, max(settings.stagger_s, 3 * usual + 0.01))

    def rate_backoff_s(self, host: str, port: int) -> float | None:
        """The current RATE back-off of a server (for reports and tests), or None."""
        with self._lock:
            entry = self._rate.get((host, port))
        return None if entry is None else entry[1]
