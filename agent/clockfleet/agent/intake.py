"""What an agent accepts: the rules for lists, profiles and commands, as plain functions.

Nothing here touches MQTT, files or clocks of its own: each function gets what it judges and
what the agent remembers, and says yes (None) or why not. `clockfleet.agent.service` applies
the verdicts; tests call these directly.

- A list or profile is accepted only when it decodes strictly, carries a signature by a key
  in the agent's trust store (when one is configured) and a version newer than the last one
  applied. Versions, never timestamps: this host's clock may be years off.
- A resync command is obeyed at most once per `floor_s` (RFC 4330's 16 s), and dropped when
  it is older than `max_age_s`, judged only once the host's clock is known good.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Optional, TypeVar, Union

from clockfleet.protocol import signing
from clockfleet.protocol.messages import Command, Profile, ServerList

M = TypeVar("M", ServerList, Profile)


# (message type, topic id, payload bytes, id of the trust store) -> (that store, message)
CacheKey = tuple[type, str, bytes, int]
CacheEntry = tuple[signing.TrustStore, Union[ServerList, Profile]]


class VerifiedCache:
    """Payloads an agent of this process already decoded and verified, by (type, topic id,
    bytes, trust store): the same bytes under the same keys get the same verdict. Bounded
    LRU; only accepted payloads are kept (a rejection is still logged and counted by each
    agent). Used from the loop thread only."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: collections.OrderedDict[CacheKey, CacheEntry] = collections.OrderedDict()

    def get(self, key: CacheKey) -> Optional[CacheEntry]:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: CacheKey, value: CacheEntry) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of codec.REJECT_REASONS: a counter key
    detail: str


def decode_verified(cls: type[M], payload: bytes, topic_id: str, trust: signing.TrustStore) -> M:
    """The message, strictly decoded and (with trust keys) signature-checked
    (`signing.decode_signed`); raises codec.Rejected with the reason otherwise."""
    return signing.decode_signed(cls, payload, topic_id, trust)[0]


def list_refusal(
    sl: ServerList, last_applied: Optional[int], in_force: Optional[ServerList]
) -> Optional[Refusal]:
    """Why a verified list for its region is not applied (a replay), or None.

    `last_applied` is the last version applied from that region. An equal version is the
    list applied when this agent last followed the region (a move back after a profile
    change): the publisher never signs two lists with one version. It is taken again unless
    that region's list is the one in force already.
    """
    if last_applied is None or sl.version > last_applied:
        return None
    rejoined = sl.version == last_applied and (in_force is None or in_force.region != sl.region)
    if rejoined:
        return None
    return Refusal(
        "replay", f"version {sl.version} is not newer than v{last_applied} already applied"
    )


def profile_refusal(prof: Profile, last_applied: Optional[int]) -> Optional[Refusal]:
    if last_applied is not None and prof.version <= last_applied:
        return Refusal(
            "replay", f"version {prof.version} is not newer than v{last_applied} applied"
        )
    return None


def command_ignored(
    cmd: Command,
    *,
    since_last_obeyed_s: Optional[float],
    floor_s: float,
    clock_good: bool,
    wall_now: float,
    max_age_s: float,
) -> Optional[str]:
    """Why a resync command is not obeyed, or None. Commands queue up while an agent is
    offline, and anyone allowed to send one could send thousands."""
    if since_last_obeyed_s is not None and since_last_obeyed_s < floor_s:
        return f"the last one was obeyed less than {floor_s:g} s ago"
    if cmd.issued_at is not None and clock_good:
        age = wall_now - cmd.issued_at.timestamp()
        if age > max_age_s:
            return f"issued {age:.0f} s ago (older than {max_age_s:g} s)"
    return None


def verified_cached(
    cache: Optional[VerifiedCache],
    cls: type[M],
    payload: bytes,
    topic_id: str,
    trust: signing.TrustStore,
) -> M:
    """decode_verified, remembered in `cache` (a fleet's VerifiedCache, or None): agents of one
    process receive the same bytes, and one Ed25519 check (~0.2 ms) serves them all, as it
    would on separate hosts checking in parallel. Only accepted payloads are remembered."""
    if cache is None:
        return decode_verified(cls, payload, topic_id, trust)
    key = (cls, topic_id, payload, id(trust))
    hit = cache.get(key)
    if hit is not None and hit[0] is trust and isinstance(hit[1], cls):
        return hit[1]
    msg = decode_verified(cls, payload, topic_id, trust)
    cache.put(key, (trust, msg))
    return msg
