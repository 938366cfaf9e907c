"""What every program asks of an MQTT session, answered once for all three.

- **Is the retained snapshot complete?** A broker handles one client's packets in order and
  queues a subscription's retained messages while handling its SUBSCRIBE, so the answer to
  any later packet of the same client follows them. The later packet is an UNSUBSCRIBE of a
  topic nobody uses (`fence_topic`): it needs no ACL grant, creates no state and delivers
  nothing, and its UNSUBACK marks the end of the snapshot. Brokers that replay retained
  messages asynchronously (NATS) can answer it early: readers there also judge an agent by
  its report's age, and `--once` waits a short grace for a list that is still on its way.
- **Why did the broker refuse?** By reason code, never by message text (`refusal`).
- **When to try again?** Capped exponential backoff with full jitter (`backoff_delay`),
  since paho's own has none and a fleet that retries in step hammers a restarted broker.
- **Where does the connection stand?** `LinkState`, the same names in every program.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import Enum
from typing import Any, Optional

# MQTT 5 reason codes (MQTT 3.1.1 CONNACK codes arrive mapped onto these by paho 2).
_REFUSALS = {
    128: "unspecified",
    129: "malformed",
    130: "protocol-error",
    131: "implementation-specific",
    132: "unsupported-protocol",
    133: "client-id-refused",
    134: "bad-credentials",
    135: "not-authorised",
    136: "server-unavailable",
    137: "server-busy",
    138: "banned",
    143: "topic-filter-invalid",
    145: "packet-id-in-use",
    151: "quota-exceeded",
    158: "shared-subscriptions-unsupported",
    161: "subscription-ids-unsupported",
    162: "wildcards-unsupported",
}
# Refusals that another try with the same identity cannot change.
FINAL_REFUSALS = frozenset({"bad-credentials", "not-authorised", "banned", "client-id-refused"})


def fence_topic(prefix: str, client_id: str) -> str:
    """The never-used topic whose UNSUBACK ends a retained snapshot (see module doc)."""
    return f"{prefix}/fence/{client_id}"


def refusal(code: Any) -> str | None:
    """A refusal's short name (a log word and a counter key), or None when `code` is success.

    `code` is a paho ReasonCode, an int, or a list of them (a SUBACK's): the first failure
    in the list counts.
    """
    if isinstance(code, (list, tuple)):
        for c in code:
            name = refusal(c)
            if name is not None:
                return name
        return None
    value = getattr(code, "value", code)
    if not isinstance(value, int) or value < 128:
        return None
    return _REFUSALS.get(value, f"reason-{value}")


def backoff_delay(
    attempt: int, min_s: float = 1.0, max_s: float = 120.0, rng: Any = random
) -> float:
    """Delay before retry number `attempt` (0 first): uniform in 0..min(max_s, min_s * 2^n)."""
    return float(rng.uniform(0.0, min(max_s, min_s * 2.0 ** min(max(attempt, 0), 30))))


class LinkState(str, Enum):
    """Where one program's broker connection stands; every program names it the same way
    (a short-lived publisher session passes through CONNECTING to ONLINE and CLOSED)."""

    IDLE = "idle"  # not connected; a retry may be armed
    CONNECTING = "connecting"  # TCP, TLS and CONNECT under way
    AWAITING_CONNACK = "awaiting-connack"
    LEARNING = "learning-session"  # the agent reads its own retained status first
    ONLINE = "online"
    STOPPING = "stopping"
    CLOSED = "closed"


class Fences:
    """The snapshot fences a session has asked for, and what to do when each is answered.

    arm() sends the UNSUBSCRIBE of the session's fence topic (`fence_topic`); the program's
    on_unsubscribe passes every mid to answered(), which runs the callback of a fence and
    says whether it was one. A reconnect clears() them: the new session asks again."""

    def __init__(self, prefix: str, client_id: str) -> None:
        self.topic = fence_topic(prefix, client_id)
        self._waiting: dict[int, Callable[[], None]] = {}

    def arm(self, client: Any, then: Callable[[], None]) -> Optional[int]:
        rc, mid = client.unsubscribe(self.topic)
        if rc != 0 or mid is None:  # paho's MQTT_ERR_SUCCESS; not connected otherwise
            return None
        self._waiting[mid] = then
        return int(mid)

    def answered(self, mid: int) -> bool:
        then = self._waiting.pop(mid, None)
        if then is None:
            return False
        then()
        return True

    def clear(self) -> None:
        self._waiting.clear()
