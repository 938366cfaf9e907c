"""The version rule: which version a changed region list or profile gets.

version = max(verified version on the broker, the publisher's own record, a date floor
YYYYMMDD00) + 1. Agents refuse any version not newer than the one they applied (a replay),
and the broker can lose its retained state (Mosquitto autosaves every 30 minutes by
default), so the publisher's record and the date floor keep versions going up when the
broker forgot them. Only a verified broker copy counts (`broker_copies`): an unsigned or
forged one could otherwise push versions to the end of the space and lock agents out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from clockfleet.protocol.messages import MAX_VERSION

# The two kinds of entry that carry a version, each counted per id.
Kind = Literal["region", "profile"]

# How far a verified version on the broker may run ahead of max(own record, today's date
# floor) and still be adopted without --accept-version-jump: 1,000,000 is a year of date
# floors (YYYYMMDD00 grows by 10^6 a year). Another publisher sharing the key, or a clock a
# few days ahead, stays far below it; 2^53-1 (the end of the version space) is far above.
MAX_VERSION_JUMP = 1_000_000


def date_floor(now: datetime | None = None) -> int:
    """YYYYMMDD00 of today (UTC), like a DNS zone serial: a floor no lost state goes below."""
    return int((now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d")) * 100


class VersionJump(ValueError):
    """A verified version too far ahead to adopt without the operator's word."""

    def __init__(self, counted: int, own: int) -> None:
        super().__init__(f"version {counted} is more than {MAX_VERSION_JUMP:,} above {own}")
        self.counted = counted
        self.own = own


class VersionSpaceEnd(ValueError):
    """The next version would not fit the wire contract's 0..2^53-1."""


def next_version(
    counted: int | None, recorded: int, floor: int, *, accept_jump: bool = False
) -> int:
    """The version a changed entry gets.

    `counted` is the broker copy's version when it verifies with a key the publisher holds
    (else None), `recorded` the publisher's own record, `floor` today's date floor.
    Raises VersionJump when `counted` is more than MAX_VERSION_JUMP beyond max(recorded,
    floor) and accept_jump is false, and VersionSpaceEnd past MAX_VERSION.
    """
    own = max(recorded, floor)
    if counted is not None and counted > own + MAX_VERSION_JUMP and not accept_jump:
        raise VersionJump(counted, own)
    version = max(counted or 0, own) + 1
    if version > MAX_VERSION:
        raise VersionSpaceEnd(f"version would exceed {MAX_VERSION}")
    return version
