"""The status session an agent announces, and how it is recovered from the broker.

Each connection of the service announces session = previous + 1 in its will and its
`online`, so readers can tell a fresh `online` from one a crashed broker kept. The previous
value lives in the state dir; when that is lost, the agent's own retained status on the
broker is the only memory left, and the counter must never go backwards."""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Optional

from clockfleet.protocol import codec
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.messages import Status

log = logging.getLogger("clockfleet.agent")


@dataclass
class SessionCounter:
    """The status session this agent announces (the service; --once announces none)."""

    announce: bool
    value: int = 0
    learn: bool = False  # read our own retained status before going online
    seen: Optional[int] = None  # the highest session that status showed

    def saw_status(self, agent_id: str, payload: bytes, counters: collections.Counter[str]) -> None:
        """Our own retained status arrived while learning: remember the session it shows."""
        if not payload:
            return
        try:
            status, _ = codec.decode(Status, payload, topic_id=agent_id)
        except Rejected as r:
            counters[r.reason] += 1
            log.warning("%s: rejected own retained status: %s: %s", agent_id, r.reason, r.detail)
            return
        self.seen = max(self.seen or 0, status.session)
