"""Probe an ordered NTP server list: which server gives the sync, and at what cost in time.

Servers are tried in the operator's order and decided in that order (choice.py: the first
that passes wins, the falseticker rule, the panic limit on a first sync). To keep silent
servers cheap, a server that has not answered within a short stagger does not hold up the
next one: its query starts then (as happy-eyeballs does for connections), while the order
still decides which answer wins. A server that answers within its usual time means no other
server is asked at all. Every server ends up in `ProbeResult.tried` with an outcome;
nothing raises for a bad server.

`probe()` is synchronous and keeps no global state, so many agents may call it from several
threads at once; what an agent remembers of its servers (kiss-o'-death, usual delays) lives
in a `KodMemory` each agent owns.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import math
import socket
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Union

from clockfleet.agent.choice import Attempt, Choice, ProbeResult
from clockfleet.ntp.checks import KISS_RATE, KISS_REFUSALS, ProbeSettings, Sample, kod_outcome
from clockfleet.ntp.exchange import run_steps, sample_burst_steps
from clockfleet.protocol.messages import clip_text

__all__ = ["Attempt", "KodMemory", "ProbeResult", "ProbeSettings", "Sample", "probe"]

MAX_ADDRESSES = 4  # of one name; bounds the time a many-address name can take
# getaddrinfo() cannot be cancelled and a dead resolver holds each call for its own timeouts
# (5 s x attempts x search domains). Names are looked up on this pool, all of a list's at
# once, and the probe waits for them only until one shared deadline: 64 slow names cost
# ProbeSettings.resolve_timeout_s, not minutes. A lookup that outlives it finishes on the
# pool, unwaited.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")

Resolved = Union[list[tuple[int, tuple]], str]  # addresses to try, or why there are none


class KodMemory:
    """What one agent remembers of its servers, keyed by (host, port) as the list names them.

    Kiss-o'-death: RATE skips the server for a back-off that doubles on every RATE (capped);
    a good answer forgets it. DENY/RSTR skip it until reset(), which the agent calls when its
    list changes. Usual delay: the last round trip a server answered in, so that the stagger
    before asking the next server is never shorter than a far server's usual answer.
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
        self._delay: dict[tuple[str, int], float] = {}  # last round trip, seconds

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
            if attempt.sample is not None:
                self._delay[key] = attempt.sample.delay_s

    def stagger_s(self, host: str, port: int, settings: ProbeSettings) -> float:
        """How long this server may stay silent before the next one is asked as well."""
        with self._lock:
            usual = self._delay.get((host, port), 0.0)
        return min(settings.timeout_s, max(settings.stagger_s, 3 * usual + 0.01))

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
    host: str,
    port: int,
    settings: ProbeSettings,
    resolved: Resolved | None = None,
    on_answer: Callable[[], None] | None = None,
) -> tuple[Attempt, str | None]:
    """Take a sample burst from the server's addresses in turn until one passes.

    `resolved` is what resolve_all() found (looked up here when not given). Each address
    gets its own settings.timeout_s (at most MAX_ADDRESSES of them). Returns the Attempt and
    the kiss code received, if any.
    """
    return run_steps(probe_server_steps(host, port, settings, resolved, on_answer))


def probe_server_steps(
    host: str,
    port: int,
    settings: ProbeSettings,
    resolved: Resolved | None = None,
    on_answer: Callable[[], None] | None = None,
    answer_by: float | None = None,
) -> Generator[None, None, tuple[Attempt, str | None]]:
    """probe_server() as steps: it yields once if the first address has not answered by
    `answer_by` (clockfleet.ntp.exchange.exchange_steps), so the caller can go on elsewhere."""
    if resolved is None:
        resolved = resolve_all([(host, port)], settings.resolve_timeout_s)[(host, port)]
    if isinstance(resolved, str):
        outcome = "unreachable" if resolved.startswith("port ") else "unresolvable"
        return Attempt(host, port, outcome, resolved), None
    addresses = resolved
    first: Attempt | None = None
    requests = 0
    for family, sockaddr in addresses[:MAX_ADDRESSES]:
        burst = yield from sample_burst_steps(family, sockaddr, settings, on_answer, answer_by)
        answer_by = None
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


# Bursts of a staggered pass run here, so the agent's own worker waits on them. 32 covers
# the workers of a fleet process each probing a few silent servers at once.
_BURSTS = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="ntp")


@dataclass
class _Server:
    """One server's progress in a pass."""

    host: str
    port: int
    started: float | None = None  # monotonic time its query began
    answered: bool = False  # a first answer (or its failure) came
    result: Attempt | None = None  # its final Attempt


@dataclass
class _Pass:
    servers: list[_Server]
    settings: ProbeSettings
    kod: KodMemory
    resolved: dict[tuple[str, int], Resolved]
    lock: threading.Condition = field(default_factory=threading.Condition)

    def launch(self, i: int, inline_until: float | None = None) -> None:
        """Start server i's query: on the burst pool, or (inline_until given) on this thread
        until it answers or that time passes, then handed on to the pool still waiting. A
        server that answers at once then costs no thread hop at all."""
        s = self.servers[i]
        s.started = time.monotonic()
        skipped = self.kod.skip(s.host, s.port)
        if skipped is not None:
            self._done(s, skipped)
            return
        steps = probe_server_steps(
            s.host, s.port, self.settings, self.resolved.get((s.host, s.port)),
            on_answer=lambda: self._answered(s), answer_by=inline_until,
        )  # fmt: skip
        if inline_until is not None:
            try:
                next(steps)
            except StopIteration as done:
                self._finish(s, done.value)
                return
            except Exception as exc:
                self._done(s, _failed(s, exc))
                return
        _BURSTS.submit(self._run, s, steps)

    def _run(self, s: _Server, steps: Generator[None, None, tuple[Attempt, str | None]]) -> None:
        try:
            self._finish(s, run_steps(steps))
        except Exception as exc:  # a bug here must end as an outcome, not a hung probe
            self._done(s, _failed(s, exc))

    def _finish(self, s: _Server, outcome: tuple[Attempt, str | None]) -> None:
        attempt, kiss = outcome
        self.kod.record(attempt, kiss)
        self._done(s, attempt)

    def _answered(self, s: _Server) -> None:
        with self.lock:
            s.answered = True
            self.lock.notify_all()

    def _done(self, s: _Server, attempt: Attempt) -> None:
        with self.lock:
            s.answered, s.result = True, attempt
            self.lock.notify_all()

    def next_event(self, k: int, launched: int) -> bool:
        """Wait until server k has its result (True) or the last launched server's stagger
        ran out while another is left to launch (False)."""
        with self.lock:
            while self.servers[k].result is None:
                last = self.servers[launched - 1]
                if launched < len(self.servers) and not last.answered:
                    assert last.started is not None
                    stagger = self.kod.stagger_s(last.host, last.port, self.settings)
                    left = last.started + stagger - time.monotonic()
                    if left <= 0:
                        return False
                    self.lock.wait(left)
                else:
                    self.lock.wait()
            return True


def _failed(s: _Server, exc: Exception) -> Attempt:
    return Attempt(s.host, s.port, "bad-packet", f"probe failed: {exc!r}")


def _probe_pass(
    servers: Sequence[tuple[str, int]],
    settings: ProbeSettings,
    kod: KodMemory,
    resolved: dict[tuple[str, int], Resolved],
    panic_s: float | None,
) -> ProbeResult:
    """One pass over the list: queries start in order, each when the one before has failed
    or stayed silent past its stagger; results are taken in order (choice.py)."""
    choice = Choice(settings, panic_s, len(servers))
    run = _Pass([_Server(h, p) for h, p in servers], settings, kod, resolved)
    if not servers:
        return choice.result()
    stagger = settings.stagger_s > 0
    first = run.servers[0]
    # The first server on this thread: while it answers in its usual time nothing else runs.
    until = time.monotonic() + kod.stagger_s(first.host, first.port, settings) if stagger else None
    run.launch(0, until if until is not None else math.inf)
    launched, k = 1, 0
    while k < len(servers) and not choice.decided:
        # without staggering, nothing is left to launch early: just wait for server k
        if not run.next_event(k, launched if stagger else len(servers)):
            run.launch(launched)
            launched += 1
            continue
        result = run.servers[k].result
        assert result is not None
        choice.add(result)
        k += 1
        if not choice.decided and k < len(servers) and launched <= k:
            run.launch(k)  # server k-1 failed before its stagger ran out
            launched = k + 1
    for s in run.servers[k:]:
        if s.started is None:
            choice.add(Attempt(s.host, s.port, "not-tried"))
        else:  # asked while an earlier server was slow; that one gave the sync
            choice.add(
                Attempt(s.host, s.port, "not-tried", "asked after a stagger; an earlier server won")
            )
    return choice.result()
