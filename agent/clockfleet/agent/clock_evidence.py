"""Evidence, that the host itself can trust, that its clock is behind.

Only such evidence may waive a TLS certificate's validity dates (link.py): a host whose clock
reads right must never accept an expired certificate, or a man in the middle holding a
retired broker certificate of the fleet's CA (its key leaked after it was retired) would get
every restarting agent's password, and by dropping NTP would keep the window open for good.

The clock is provably behind when it reads more than SLACK_S earlier than a time the host
knows has passed (the latest of):
- this software's release date (`clockfleet.protocol.version.RELEASED`): a host cannot run
  it before it was released (systemd-timesyncd moves a clock forward to its own build time
  at boot for the same reason);
- the `issued_at` of the signed region list it holds, verified with its trust keys: written
  by the publisher from a synced clock;
- its own last good sync (`last_good.json`'s `at`, written from the corrected clock).
None of these can be moved forward by the network: the list is signed and the other two are
the host's own. A clock far *ahead* has no such proof, and its expired-looking certificates
are refused (docs/far-off-clocks.md says which certificates a host in each state accepts).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from clockfleet.protocol.version import RELEASED

# A publisher's clock a little ahead, or a list issued minutes ago, must not read as
# evidence: only a clock a day or more behind a proven time counts.
SLACK_S = 86400.0


@dataclass(frozen=True)
class Floor:
    at: float  # unix seconds
    what: str


def release_floor() -> Floor:
    day = datetime.strptime(RELEASED, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return Floor(day.timestamp(), f"the release date of this software ({RELEASED})")


def behind_evidence(now: float, floors: list[Floor], slack_s: float = SLACK_S) -> Optional[str]:
    """Why the clock `now` is provably behind (the latest floor it reads before), or None
    when nothing proves it."""
    latest = max(floors, key=lambda f: f.at)
    if now >= latest.at - slack_s:
        return None
    return (
        f"the clock reads {_iso(now)}, {(latest.at - now) / 86400:.0f} days before "
        f"{latest.what} ({_iso(latest.at)})"
    )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
