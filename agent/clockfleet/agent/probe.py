"""Probe an ordered NTP server list (docs/architecture.md: "How a sync picks a server").

Servers are tried one by one in the operator's order; the first that gives a valid sample
wins, unless its offset is large: then the next passing server must agree with it (a
falseticker check), otherwise it is reported `falseticker` and the search goes on. Every
server ends up in `ProbeResult.tried` with an outcome; nothing raises for a bad server.

`probe()` is synchronous and keeps no global state, so many agents may call it from several
threads at once; kiss-o'-death memory lives in a `KodMemory` each agent owns.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Union

from clockfleet.agent.ntp_checks import KISS_RATE, KISS_REFUSALS, ProbeSettings, Sample, kod_outcome
from clockfleet.agent.ntp_exchange import sample_burst
from clockfleet.protocol.messages import Outcome, clip_text

__all__ = ["Attempt", "KodMemory", "ProbeResult", "ProbeSettings", "Sample", "probe"]

MAX_ADDRESSES = 4  # of one name; bounds the time a many-address name can take
# getaddrinfo() cannot be cancelled and a dead resolver holds each call for its own timeouts
# (5 s x attempts x search domains). Names are looked up on this pool, all of a list's at
# once, and the probe waits for them only until one shared deadline: 64 slow names cost
# ProbeSettings.resolve_timeout_s, not minutes. A lookup that outlives it finishes on the
# pool, unwaited.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")

Resolved = Union[list[tuple[int, tuple]], str]  # addresses to try, or why there are none


@dataclass(frozen=True)
class Attempt:
    """One server's outcome, in list order."""

    host: str
    port: int
    outcome: Outcome
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
                    kod_outcome(code),
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
            if kiss in KISS_REFUSALS:
                self._refused[key] = kiss
            elif kiss == KISS_RATE:
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


def resolve_all(
    servers: Sequence[tuple[str, int]], timeout_s: float
) -> dict[tuple[str, int], Resolved]:
    """Every server's addresses (or why it has none), looked up concurrently, bounded in time.

    IP literals need no resolver and are answered at once; only names go to the pool.
    """
    out: dict[tuple[str, int], Resolved] = {}
    pending: dict[tuple[str, int], concurrent.futures.Future] = {}
    for host, port in servers:
        if (host, port) in out or (host, port) in pending:
            continue
        if not 1 <= port <= 65535:  # getaddrinfo would wrap 65536 + n around to n
            out[(host, port)] = f"port {port} outside 1..65535"
        elif _is_ip_literal(host):
            out[(host, port)] = _lookup(host, port)
        else:
            pending[(host, port)] = _RESOLVER.submit(_lookup, host, port)
    deadline = time.monotonic() + timeout_s
    for key, future in pending.items():
        try:
            out[key] = future.result(max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            out[key] = f"cannot resolve {key[0]}: no answer within {timeout_s:g} s"
    return out


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _lookup(host: str, port: int) -> Resolved:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError, OverflowError) as e:
        return f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}"
    addresses: list[tuple[int, tuple]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if (family, sockaddr) not in addresses:
            addresses.append((family, sockaddr))
    return addresses or f"cannot resolve {host}: no address"


def probe_server(
    host: str, port: int, settings: ProbeSettings, resolved: Resolved | None = None
) -> tuple[Attempt, str | None]:
    """Take a sample burst from the server's addresses in turn until one passes.

    `resolved` is what resolve_all() found (looked up here when not given). Each address
    gets its own settings.timeout_s (at most MAX_ADDRESSES of them). Returns the Attempt and
    the kiss code received, if any.
    """
    if resolved is None:
        resolved = resolve_all([(host, port)], settings.resolve_timeout_s)[(host, port)]
    if isinstance(resolved, str):
        outcome = "unreachable" if resolved.startswith("port ") else "unresolvable"
        return Attempt(host, port, outcome, resolved), None
    addresses = resolved
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
    more = min(len(addresses), MAX_ADDRESSES) - 1
    detail = first.detail
    if more > 0:
        detail = f"{first.address}: {detail} (and {more} more addresses failed)"
    return replace(first, requests=requests, detail=detail), None


def probe(
    servers: Sequence[tuple[str, int]],
    settings: ProbeSettings = ProbeSettings(),  # noqa: B008 - frozen, so sharing is safe
    kod: KodMemory | None = None,
    *,
    first_sync: bool = False,
) -> ProbeResult:
    """Probe servers in order; see the module docstring for the rules.

    A first pass uses the short settings.timeout_s so that silent servers early in the
    list cost little; when it finds no server and some of them only timed out, one more
    pass with settings.retry_timeout_s gives slow (far, loaded) servers their chance.

    `first_sync`: no good sync yet since the agent started (a host whose RTC died may be
    years off). The panic limit is then waived, as ntpd -g and chrony's makestep do, for an
    offset that the next passing server confirms (the falseticker rule); a list of one
    server applies it unconfirmed and says so. Afterwards the limit stands.
    """
    kod = kod if kod is not None else KodMemory()
    panic_s: float | None = None
    if first_sync and math.isfinite(settings.panic_offset_s):
        panic_s = settings.panic_offset_s
        settings = replace(settings, panic_offset_s=math.inf)
    resolved = resolve_all(servers, settings.resolve_timeout_s)
    first = _probe_pass(servers, settings, kod, resolved, panic_s)
    slow = settings.retry_timeout_s
    if first.ok or slow <= settings.timeout_s or all(a.outcome != "timeout" for a in first.tried):
        return first
    second = _probe_pass(servers, replace(settings, timeout_s=slow), kod, resolved, panic_s)
    retried = f"no server answered within {settings.timeout_s:g} s; retried at {slow:g} s"
    second.note = clip_text(f"{retried}; {second.note}" if second.note else retried)
    return second


def _probe_pass(
    servers: Sequence[tuple[str, int]],
    settings: ProbeSettings,
    kod: KodMemory,
    resolved: dict[tuple[str, int], Resolved],
    panic_s: float | None,
) -> ProbeResult:
    tried: list[Attempt] = []
    chosen: int | None = None  # index in tried of the server whose sample is applied
    pending: int | None = None  # a passing server with a large offset, awaiting a second
    note: str | None = None
    for host, port in servers:
        if chosen is not None:
            tried.append(Attempt(host, port, "not-tried"))
            continue
        attempt = kod.skip(host, port)
        if attempt is None:
            attempt, kiss = probe_server(host, port, settings, resolved.get((host, port)))
            kod.record(attempt, kiss)
        tried.append(attempt)
        if attempt.sample is None:
            continue
        offset = attempt.sample.offset_s
        if pending is not None:
            first = tried[pending]
            assert first.sample is not None
            claimed = first.sample.offset_s
            if abs(offset - claimed) <= settings.agree_s:
                chosen = pending
                note = (
                    f"offset {claimed:+.6f} s of {_name(first)} confirmed by "
                    f"{_name(attempt)} ({offset:+.6f} s)"
                )
                if panic_s is not None and abs(claimed) > panic_s:
                    note += f"; beyond the {panic_s:g} s panic limit, applied as a first sync"
                continue
            tried[pending] = replace(
                first,
                outcome="falseticker",
                detail=(
                    f"offset {claimed:+.6f} s, but {_name(attempt)} says {offset:+.6f} s "
                    f"(more than {settings.agree_s:g} s apart)"
                ),
            )
            pending = None
        if abs(offset) > settings.confirm_offset_s:
            pending = len(tried) - 1
        else:
            chosen = len(tried) - 1
    if chosen is None and pending is not None:
        alone = tried[pending]
        assert alone.sample is not None
        offset = alone.sample.offset_s
        if panic_s is not None and abs(offset) > panic_s and len(servers) > 1:
            # A first sync may jump the clock by any amount, but only on two servers' word.
            tried[pending] = replace(
                alone,
                outcome="panic-offset",
                detail=(
                    f"offset {offset:+.3f} s beyond the panic limit {panic_s:g} s and no later "
                    "server passed to confirm it"
                ),
            )
        else:
            chosen = pending
            note = (
                f"offset {offset:+.6f} s of {_name(alone)} applied unconfirmed: "
                "no later server passed to confirm it"
            )
    if len(servers) == 1 and chosen is not None:
        sample = tried[chosen].sample
        assert sample is not None
        note = f"single server: offset {sample.offset_s:+.6f} s applied unconfirmed"
        if panic_s is not None and abs(sample.offset_s) > panic_s:
            note += f", beyond the {panic_s:g} s panic limit, as a first sync"
    tried = [
        a if clip_text(a.detail) == a.detail else replace(a, detail=clip_text(a.detail))
        for a in tried
    ]
    return ProbeResult(
        ok=chosen is not None,
        chosen=None if chosen is None else tried[chosen],
        tried=tried,
        note=clip_text(note),
    )


def _name(attempt: Attempt) -> str:
    return f"{attempt.host}:{attempt.port}"
