"""A sample burst from an NTS server, as steps that never block (see exchange.py).

With cookies in the jar, the burst goes straight to NTP, each request sealed with the kept
keys and one cookie. Without, NTS-KE runs first on a worker thread (nts_tls.py: blocking
TLS), while the steps wait on a socket pair the worker writes to when it is done: the
caller's loop (an agent's, or a fleet's of thousands) never blocks and gains no new kind of
event. Every answer is authenticated before it is judged: one that does not verify is
ignored like an answer with a wrong origin (`nts-auth-failed` if nothing better comes), an
NTS NAK ends the burst and drops the session. An NTS server is never asked in plain NTP.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from clockfleet.ntp.checks import Failure, ProbeSettings
from clockfleet.ntp.exchange import BurstResult, Verify, Wait, sample_burst_steps
from clockfleet.ntp.lookup import SockAddr
from clockfleet.ntp.nts_cookies import CookieJar, NtsSession, SessionKey
from clockfleet.ntp.nts_packet import Opened, open_response, placeholders_wanted, seal_request
from clockfleet.ntp.nts_tls import KeFailed, NtsKeys, NtsTrust, key_exchange

log = logging.getLogger("clockfleet.ntp")

# NTS-KE blocks (TCP, TLS, maybe a lookup of a negotiated name): a few at once on a pool,
# as the probe's name lookups do. A handshake that outlives its wait finishes there, unwaited.
_KE_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="nts-ke")
# The loop waits this much past the handshake's own deadline, so that the worker's reason
# (which step timed out) is the one reported.
_KE_SLACK_S = 0.5


def _never_behind() -> Optional[str]:
    return None


@dataclass
class NtsClient:
    """What one agent's probe needs for NTS: whom to trust, its cookie jar, and the evidence
    that its clock is behind (clock_evidence.py; called on the loop, before a handshake)."""

    trust: NtsTrust = field(default_factory=NtsTrust)
    jar: CookieJar = field(default_factory=CookieJar)
    clock_behind: Callable[[], Optional[str]] = _never_behind
    ke_timeout_s: float = 5.0
    # Told of each certificate whose dates were waived ("nts-time-check-waived") or refused
    # for its dates alone ("nts-cert-dates-refused"), with the detail, for counting.
    event: Callable[[str, str], None] = lambda _kind, _detail: None


def handshake_steps(
    client: NtsClient,
    key: SessionKey,
    found: list[tuple[int, SockAddr]],
) -> Generator[Wait, None, Union[NtsSession, Failure]]:
    """NTS-KE on a worker; the new session is kept in the jar."""
    host, ke_port, ntp_port = key
    evidence = client.clock_behind()
    box: list[object] = []
    reader, writer = socket.socketpair()
    reader.setblocking(False)

    def work() -> None:
        try:
            box.append(
                key_exchange(
                    host, ke_port, ntp_port, found, client.trust, client.ke_timeout_s, evidence
                )
            )
        except Exception as exc:  # a library's surprise is a failed handshake, not a crash
            log.exception("NTS-KE with %s:%d failed", host, ke_port)
            box.append(KeFailed(Failure("nts-ke-refused", f"NTS-KE failed: {exc!r}")))
        finally:
            with contextlib.suppress(OSError):  # the waiting side gave up, closed its end
                writer.send(b"!")
            writer.close()

    deadline = time.monotonic() + client.ke_timeout_s + _KE_SLACK_S
    try:
        _KE_POOL.submit(work)
        while not box:
            yield reader, deadline
            if not box and time.monotonic() >= deadline:
                return Failure("timeout", f"NTS-KE: no answer in {client.ke_timeout_s:g} s")
    finally:
        reader.close()
    got = box[0]
    if isinstance(got, KeFailed):
        if got.dates_refused:
            client.event("nts-cert-dates-refused", got.failure.detail)
        return got.failure
    assert isinstance(got, NtsKeys)
    if got.waived is not None:
        client.event("nts-time-check-waived", got.waived)
    session = NtsSession(
        got.c2s, got.s2c, got.cookies, got.family, got.ntp_address, client.jar.now()
    )
    client.jar.keep(key, session)
    return session


class _SessionAuth:
    """Seals a burst's requests with one session's keys and cookies (exchange.Authenticator)."""

    def __init__(self, jar: CookieJar, key: SessionKey, session: NtsSession) -> None:
        self.jar, self.key, self.session = jar, key, session

    def seal(self, request: bytes) -> Union[tuple[bytes, Verify], Failure]:
        s = self.session
        cookie = s.take()
        if cookie is None:
            return Failure("nts-no-cookies", "no NTS cookie left for a further request")
        sealed = seal_request(request, cookie, placeholders_wanted(s.held, len(cookie)), s.c2s)

        def verify(data: bytes) -> Optional[Failure]:
            opened = open_response(data, sealed.uid, s.s2c)
            if isinstance(opened, Opened):
                s.give(opened.cookies)
                return None
            if opened.nak:
                self.jar.drop(self.key, s)
                detail = f"{opened.detail}; keys dropped, the next sync does NTS-KE again"
                return Failure("nts-auth-failed", detail)
            return Failure("nts-auth-failed", opened.detail)

        return sealed.data, verify

    def final(self, failure: Failure) -> bool:
        return failure.detail.startswith("NTS NAK")


def nts_burst_steps(
    client: NtsClient,
    key: SessionKey,
    found: list[tuple[int, SockAddr]],
    settings: ProbeSettings,
    on_answer: Optional[Callable[[], None]] = None,
) -> Generator[Wait, None, tuple[BurstResult, Optional[str]]]:
    """A sample burst from the NTS server `key` names (its addresses `found`), NTS-KE first
    when the jar has no session for it. Returns the burst and the NTP address it went to."""
    session = client.jar.session(key)
    if session is None:
        got = yield from handshake_steps(client, key, found)
        if isinstance(got, Failure):
            return BurstResult(None, got, 0), None
        session = got
    auth = _SessionAuth(client.jar, key, session)
    burst = yield from sample_burst_steps(
        session.family, session.ntp_address, settings, on_answer, auth
    )
    return burst, str(session.ntp_address[0])
