"""When an agent syncs next: start-up delay, poll interval, resync jitter, failure backoff.

RFC 4330 §10 / RFC 8633: never poll a server more often than every 16 s, randomise the first
poll after start-up, and jitter every later one, so that thousands of hosts rebooted together
do not hit one NTP server in the same second.
"""

from __future__ import annotations

import random

from clockfleet.protocol.messages import MIN_POLL_INTERVAL_S


def startup_delay(rng: random.Random, max_s: float) -> float:
    return rng.uniform(0.0, max_s) if max_s > 0 else 0.0


def resync_delay(rng: random.Random, jitter_s: float) -> float:
    """After a new list or profile: at once, spread over 0..jitter_s."""
    return rng.uniform(0.0, jitter_s) if jitter_s > 0 else 0.0


def poll_delay(rng: random.Random, interval_s: float) -> float:
    """The next routine poll: the interval ±10 %, never under 16 s."""
    return max(float(MIN_POLL_INTERVAL_S), interval_s * rng.uniform(0.9, 1.1))


def retry_delay(rng: random.Random, failures: int, min_s: float, max_s: float) -> float:
    """After `failures` (>= 1) failed syncs in a row: capped exponential, half jittered.

    Half of the delay is fixed so a failing fleet never retries at ~0 s (full jitter can),
    the other half spreads the fleet out.
    """
    ceiling = min(max_s, min_s * 2.0 ** min(max(failures - 1, 0), 30))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)
