"""Cookies and keys kept between syncs, so that a resync does not repeat the NTS-KE handshake.

One `NtsSession` per NTS server of the list (keyed by host, NTS-KE port and NTP port, as the
list names it): the two keys NTS-KE exported, where NTP goes, and up to 8 cookies. Each
request spends one cookie and asks for as many back as it takes to refill the jar; each
authenticated answer brings them. A session is dropped (the next sync does NTS-KE again)
when its cookies run out, when the server answers with an NTS NAK, and after REFRESH_S
(chrony's `ntsrefresh` default, two weeks), so that keys do not live for ever. A cookie is
never sent twice (RFC 8915 §5.7: that would link our requests to each other).

Kept in memory only, per agent: keys are secrets, and a restarted agent pays one handshake.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional

from clockfleet.ntp.lookup import SockAddr
from clockfleet.ntp.nts_packet import MAX_COOKIES

REFRESH_S = 14 * 86400.0

SessionKey = tuple[str, int, int]  # host, NTS-KE port, NTP port as the list names them


class NtsSession:
    def __init__(
        self,
        c2s: bytes,
        s2c: bytes,
        cookies: tuple[bytes, ...],
        family: int,
        ntp_address: SockAddr,
        made_at: float,
    ) -> None:
        self.c2s = c2s
        self.s2c = s2c
        self.family = family
        self.ntp_address = ntp_address
        self.made_at = made_at  # monotonic
        self._cookies: deque[bytes] = deque(cookies[:MAX_COOKIES], maxlen=MAX_COOKIES)
        self._lock = threading.Lock()

    def take(self) -> Optional[bytes]:
        """The next unused cookie (it is gone from the jar), or None when none is left."""
        with self._lock:
            return self._cookies.popleft() if self._cookies else None

    def give(self, cookies: tuple[bytes, ...]) -> None:
        """New cookies from an authenticated answer; beyond 8 they are dropped."""
        with self._lock:
            for c in cookies:
                if len(self._cookies) < MAX_COOKIES:
                    self._cookies.append(c)

    @property
    def held(self) -> int:
        with self._lock:
            return len(self._cookies)


class CookieJar:
    """One agent's NTS sessions, and how many NTS-KE handshakes it has made (for tests and
    benchmarks: a resync with cookies left makes none)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, refresh_s: float = REFRESH_S
    ) -> None:
        self._clock = clock
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._sessions: dict[SessionKey, NtsSession] = {}
        self.handshakes = 0

    def session(self, key: SessionKey) -> Optional[NtsSession]:
        """A usable session (cookies left, not due for a refresh), or None: do NTS-KE."""
        with self._lock:
            s = self._sessions.get(key)
            if s is None:
                return None
            if s.held == 0 or self._clock() - s.made_at > self._refresh_s:
                del self._sessions[key]
                return None
            return s

    def keep(self, key: SessionKey, session: NtsSession) -> None:
        with self._lock:
            self._sessions[key] = session
            self.handshakes += 1

    def drop(self, key: SessionKey, session: NtsSession) -> None:
        """Forget `session` (an NTS NAK: the server no longer reads its cookies)."""
        with self._lock:
            if self._sessions.get(key) is session:
                del self._sessions[key]

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()

    def now(self) -> float:
        return self._clock()
