"""Probe an ordered NTP server list the way design.md's "Agent behaviour" says.

Servers are tried one by one in the operator's order; the first that gives a valid sample
wins, unless its offset is large: then the next passing server must agree with it (a
falseticker check), otherwise it is reported `falseticker` and the search goes on. Every
server ends up in `ProbeResult.tried` with an outcome; nothing raises for a bad server.

`probe()` is synchronous and keeps no global state, so many agents may call it from several
threads at once; kiss-o'-death memory lives in a `KodMemory` each agent owns.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from clockfleet.agent.ntp_checks import ProbeSettings, Sample
from clockfleet.agent.ntp_exchange import sample_burst

__all__ = ["Attempt", "KodMemory", "ProbeResult", "ProbeSettings", "Sample", "probe"]

MAX_ADDRESSES = 4  # of one name; bounds the time a many-address name can take
MAX_DETAIL = 256  # the report's Tried.detail bound; host names alone can be 253 long


@dataclass
class Attempt:
    """One server's outcome, in list order."""

    host: str
    port: int
    outcome: str  # one of clockfleet.protocol.messages.OUTCOMES
    detail: str | None = None
    sample: Sample | None = None
    address: str | None = None  # the resolved address that answered (or failed last)
    requests: int = 0  # datagrams sent to this server in this probe


@dataclass
class ProbeResult:
    ok: bool
    chosen: Attempt | None  # the server whose sample is applied
    tried: list[Attempt]  # every server of the list, in order; the rest "not-tried"
    note: str | None = None


class KodMemory:
    """Kiss-o'-death memory of one agent, keyed by (host, port) as the list names them.

    RATE: skip the server for a back-off that doubles on every RATE (capped); a good answer
    forgets it. DENY/RSTR: skip it until reset(), which the agent calls when its list changes.
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
                    f"kod-{code.lower()}",
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
            if kiss in ("DENY", "RSTR"):
                self._refused[key] = kiss
            elif kiss == "RATE":
                previous = self._rate.get(key)
                backoff = self._initial if previous is None else min(previous[1] * 2, self._cap)
                self._rate[key] = (self._clock() + backoff, backoff)
            elif attempt.outcome == "ok":
                self._rate.pop(key, None)

    def rate_backoff_s(self, host: str, port: int) -> float | None:
        """The current RATE back-off of a server (for reports and tests), or None."""
        with self._lock:
            entry = self._rate.get((host, port))
        return None if entry is None else entry[1]


def probe_server(host: str, port: int, settings: ProbeSettings) -> tuple[Attempt, str | None]:
    """Resolve host and take a sample burst from its addresses in turn until one passes.

    Each address gets its own settings.timeout_s (at most MAX_ADDRESSES of them). Returns
    the Attempt and the kiss code received, if any.
    """
    if not 1 <= port <= 65535:  # getaddrinfo would wrap 65536 + n around to n
        return Attempt(host, port, "unreachable", f"port {port} outside 1..65535"), None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError, OverflowError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        return Attempt(host, port, "unresolvable", f"cannot resolve {host}: {reason}"), None
    addresses: list[tuple[int, tuple]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    first: Attempt | None = None
    requests = 0
    for family, sockaddr in addresses[:MAX_ADDRESSES]:
        burst = sample_burst(family, sockaddr, settings)
        requests += burst.requests
        address = str(sockaddr[0])
        if burst.sample is not None:
            kiss = burst.failure.kiss if burst.failure is not None else None
            detail = None if kiss is None else f"kiss code {kiss} received after a good sample"
            return Attempt(host, port, "ok", detail, burst.sample, address, requests), kiss
        assert burst.failure is not None
        if burst.failure.kiss is not None:  # a KoD speaks for the server, not one address
            return Attempt(
                host, port, burst.failure.outcome, burst.failure.detail, None, address, requests
            ), burst.failure.kiss
        if first is None:
            first = Attempt(host, port, burst.failure.outcome, burst.failure.detail, None, address)
    assert first is not None
    first.requests = requests
    more = min(len(addresses), MAX_ADDRESSES) - 1
    if more > 0:
        first.detail = f"{first.address}: {first.detail} (and {more} more addresses failed)"
    return first, None


def probe(
    servers: Sequence[tuple[str, int]],
    settings: ProbeSettings = ProbeSettings(),  # noqa: B008 - frozen, so sharing is safe
    kod: KodMemory | None = None,
) -> ProbeResult:
    """Probe servers in order; see the module docstring for the rules.

    A first pass uses the short settings.timeout_s so that silent servers early in the
    list cost little; when it finds no server and some of them only timed out, one more
    pass with settings.retry_timeout_s gives slow (far, loaded) servers their chance.
    """
    kod = kod if kod is not None else KodMemory()
    first = _probe_pass(servers, settings, kod)
    slow = settings.retry_timeout_s
    if first.ok or slow <= settings.timeout_s or all(a.outcome != "timeout" for a in first.tried):
        return first
    second = _probe_pass(servers, replace(settings, timeout_s=slow), kod)
    retried = f"no server answered within {settings.timeout_s:g} s; retried at {slow:g} s"
    second.note = _clip(f"{retried}; {second.note}" if second.note else retried)
    return second


def _probe_pass(
    servers: Sequence[tuple[str, int]], settings: ProbeSettings, kod: KodMemory
) -> ProbeResult:
    tried: list[Attempt] = []
    chosen: Attempt | None = None
    pending: Attempt | None = None  # a passing server with a large offset, awaiting a second
    note: str | None = None
    for host, port in servers:
        if chosen is not None:
            tried.append(Attempt(host, port, "not-tried"))
            continue
        attempt = kod.skip(host, port)
        if attempt is None:
            attempt, kiss = probe_server(host, port, settings)
            kod.record(attempt, kiss)
        tried.append(attempt)
        if attempt.outcome != "ok":
            continue
        assert attempt.sample is not None
        if pending is not None:
            assert pending.sample is not None
            difference = attempt.sample.offset_s - pending.sample.offset_s
            if abs(difference) <= settings.agree_s:
                chosen = pending
                note = (
                    f"offset {pending.sample.offset_s:+.6f} s of {_name(pending)} confirmed by "
                    f"{_name(attempt)} ({attempt.sample.offset_s:+.6f} s)"
                )
                continue
            pending.outcome = "falseticker"
            pending.detail = (
                f"offset {pending.sample.offset_s:+.6f} s, but {_name(attempt)} says "
                f"{attempt.sample.offset_s:+.6f} s (more than {settings.agree_s:g} s apart)"
            )
            pending = None
        if abs(attempt.sample.offset_s) > settings.confirm_offset_s:
            pending = attempt
        else:
            chosen = attempt
    if chosen is None and pending is not None:
        assert pending.sample is not None
        chosen = pending
        note = (
            f"offset {pending.sample.offset_s:+.6f} s of {_name(pending)} applied unconfirmed: "
            "no later server passed to confirm it"
        )
    if len(servers) == 1 and chosen is not None and chosen.sample is not None:
        note = f"single server: offset {chosen.sample.offset_s:+.6f} s applied unconfirmed"
    for attempt in tried:
        attempt.detail = _clip(attempt.detail)
    return ProbeResult(ok=chosen is not None, chosen=chosen, tried=tried, note=_clip(note))


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= MAX_DETAIL:
        return text
    return text[: MAX_DETAIL - 1] + "…"


def _name(attempt: Attempt) -> str:
    return f"{attempt.host}:{attempt.port}"
