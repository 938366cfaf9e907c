"""An agent's reports on their way to the broker: QoS 1, retained, and never silently lost.

- Made while the broker is away, a report waits in a small backlog (the oldest go first) and
  goes out when the link is online again.
- A report not acknowledged within REPORT_ACK_TIMEOUT_S on a live connection was taken by a
  broker that cannot store it (a NATS node whose JetStream leader died keeps the connection
  and never answers): paho resends in-flight QoS 1 messages only on a new connection, so the
  link is asked to make one.
- A report acknowledged SLOW_ACK_S or more late was held through the broker's trouble and may
  not have been stored: a NATS node whose JetStream store timed out acknowledges the QoS 1
  PUBLISH after 4 s without keeping it (measured, `python -m bench scaleout`: 38 of 1000
  reports of a list change, each PUBACKed after 4.001 s, were in no node's retained store, so
  the collector never saw them). It is sent again RESEND_AFTER_S later if no newer report
  went out meanwhile, and again while its PUBACKs stay late (a NATS leader election takes
  4-9 s), at most MAX_RESENDS times; readers take a duplicate as the same report.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Optional

from clockfleet.agent.loop_host import ProbeHost

log = logging.getLogger("clockfleet.agent")

REPORT_BACKLOG = 16
REPORT_ACK_TIMEOUT_S = 10.0
SLOW_ACK_S = 2.0
RESEND_AFTER_S = 5.0
MAX_RESENDS = 3


class ReportDelivery:
    def __init__(
        self,
        agent_id: str,
        counters: collections.Counter[str],
        send: Callable[[bytes], Optional[int]],
        online: Callable[[], bool],
        reconnect: Callable[[], None],
    ) -> None:
        """`send(payload)`: publish the report now and return its mid (None when the link is
        not connected); `online()`: the link is up; `reconnect()`: make a new connection."""
        self.id = agent_id
        self.counters = counters
        self._send = send
        self._online = online
        self._reconnect = reconnect
        self.host: Optional[ProbeHost] = None
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=REPORT_BACKLOG)
        # in flight: mid -> (sent at, payload, how many times it was sent before)
        self._in_flight: dict[int, tuple[float, bytes, int]] = {}
        self._latest: Optional[bytes] = None
        self.stopped = False

    def attach(self, host: ProbeHost) -> None:
        self.host = host

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def publish(self, payload: bytes, resend: int = 0) -> bool:
        """Send a report; False when it waits in the backlog. `resend`: how many times this
        report was sent before."""
        if not resend:
            self._latest = payload
        mid = self._send(payload)
        if mid is None:
            self._backlog.append(payload)
            return False
        assert self.host is not None
        self._in_flight[mid] = (time.monotonic(), payload, resend)
        self.host.call_later(REPORT_ACK_TIMEOUT_S, lambda: self._ack_overdue(mid))
        return True

    def flush(self) -> None:
        """The link is online: send what waited."""
        while self._backlog:
            self.publish(self._backlog.popleft())

    def acked(self, mid: int) -> bool:
        """A PUBACK: True when it acknowledged a report."""
        sent = self._in_flight.pop(mid, None)
        if sent is None:
            return False
        sent_at, payload, resent = sent
        if resent < MAX_RESENDS and time.monotonic() - sent_at >= SLOW_ACK_S:
            assert self.host is not None
            self.counters["report-slow-acks"] += 1
            self.host.call_later(RESEND_AFTER_S, lambda: self._resend(payload, resent + 1))
        return True

    def _ack_overdue(self, mid: int) -> None:
        if mid not in self._in_flight or not self._online():
            return
        self.counters["report-ack-timeouts"] += 1
        log.warning(
            "%s: report not acknowledged within %g s; reconnecting so it is sent again",
            self.id,
            REPORT_ACK_TIMEOUT_S,
        )
        self._reconnect()

    def _resend(self, payload: bytes, times: int) -> None:
        if payload is not self._latest or self.stopped:
            return  # a newer report went out (or we are leaving): that one stands
        log.info("%s: sending the last report again (its PUBACK came late)", self.id)
        self.publish(payload, resend=times)
