"""Probe an ordered NTP server list: which server gives the sync, and at what cost in time.

Servers are tried in the operator's order and decided in that order (choice.py: the first
that passes wins, the falseticker rule, the panic limit on a first sync). To keep silent
servers cheap, a server that has not answered within a short stagger does not hold up the
next one: its query starts then (as happy-eyeballs does for connections), while the order
still decides which answer wins. A server that answers within its usual time means no other
server is asked at all. Every server ends up in `ProbeResult.tried` with an outcome;
nothing raises for a bad server.

`start_probe()` runs on the agent's event loop and never blocks it: every query is a
non-blocking socket the loop watches (probe_pass.py), so a fleet of 10,000 agents probes from
one thread with no hand-offs. `probe()` is the same, blocking its caller on a loop of its own.
Neither keeps global state; what an agent remembers of its servers (kiss-o'-death, usual
delays) lives in a `KodMemory` each agent owns.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from clockfleet.agent.choice import Attempt, ProbeResult
from clockfleet.agent.localloop import LocalLoop
from clockfleet.agent.loop_host import ProbeHost
from clockfleet.agent.probe_pass import Pass, ServerSteps
from clockfleet.agent.server_memory import KodMemory
from clockfleet.ntp.checks import ProbeSettings, Sample
from clockfleet.ntp.exchange import Wait, sample_burst_steps
from clockfleet.ntp.lookup import Addresses, addresses, is_ip_literal
from clockfleet.protocol.messages import Outcome, clip_text

if TYPE_CHECKING:
    from clockfleet.ntp.nts_exchange import NtsClient

__all__ = [
    "Attempt",
    "ProbeResult",
    "ProbeSettings",
    "Sample",
    "probe",
    "start_probe",
]

MAX_ADDRESSES = 4  # of one name; bounds the time a many-address name can take
# getaddrinfo() cannot be cancelled and a dead resolver holds each call for its own timeouts
# (5 s x attempts x search domains). Names are looked up on this pool, all of a list's at
# once, and the probe waits for them only until one shared deadline: 64 slow names cost
# ProbeSettings.resolve_timeout_s, not minutes. A lookup that outlives it finishes on the
# pool, unwaited.
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")

Resolved = Addresses  # addresses to try, or why there are none


class NtsProbe:
    """A list's NTS servers ((host, port) -> NTS-KE port) and the agent's NTS client."""

    def __init__(self, entries: Mapping[tuple[str, int], int], client: Optional[NtsClient]):
        self.entries = entries
        self.client = client


def resolve_all(
    servers: Sequence[tuple[str, int]], timeout_s: float
) -> dict[tuple[str, int], Resolved]:
    """Every server's addresses (or why it has none), looked up concurrently, bounded in time.

    IP literals need no resolver and are answered at once; only names go to the pool.
    """
    out: dict[tuple[str, int], Resolved] = {}
    pending: dict[tuple[str, int], concurrent.futures.Future[Addresses]] = {}
    for host, port in servers:
        if (host, port) in out or (host, port) in pending:
            continue
        if not 1 <= port <= 65535:  # getaddrinfo would wrap 65536 + n around to n
            out[(host, port)] = f"port {port} outside 1..65535"
        elif is_ip_literal(host):
            out[(host, port)] = _literal_address(host, port)
        else:
            pending[(host, port)] = _RESOLVER.submit(addresses, host, port)
    deadline = time.monotonic() + timeout_s
    for key, future in pending.items():
        try:
            out[key] = future.result(max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            out[key] = f"cannot resolve {key[0]}: no answer within {timeout_s:g} s"
    return out


@functools.lru_cache(maxsize=4096)
def _literal_address(host: str, port: int) -> Resolved:
    # An address literal always resolves the same: one lookup per process, not per probe
    # (a fleet of 10,000 agents probes the same few addresses). Callers only read the list.
    return addresses(host, port)


def probe_server_steps(
    host: str,
    port: int,
    settings: ProbeSettings,
    resolved: Resolved,
    on_answer: Callable[[], None] | None = None,
) -> Generator[Wait, None, tuple[Attempt, str | None]]:
    """Take a sample burst from the server's addresses in turn until one passes, as steps that
    never block (clockfleet.ntp.exchange). `resolved` is what resolve_all() found; each
    address gets its own settings.timeout_s (at most MAX_ADDRESSES of them). Returns the
    Attempt and the kiss code received, if any."""
    if isinstance(resolved, str):
        outcome: Outcome = "unreachable" if resolved.startswith("port ") else "unresolvable"
        return Attempt(host, port, outcome, resolved), None
    addresses = resolved
    first: Attempt | None = None
    requests = 0
    for family, sockaddr in addresses[:MAX_ADDRESSES]:
        burst = yield from sample_burst_steps(family, sockaddr, settings, on_answer)
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
    nts: Optional[NtsProbe] = None,
) -> ProbeResult:
    """Probe servers in order, blocking until the result; see start_probe for the rules."""
    loop = LocalLoop()
    results: list[ProbeResult] = []
    start_probe(servers, settings, kod, loop, results.append, first_sync=first_sync, nts=nts)
    loop.run_until(lambda: bool(results))
    return results[0]


def start_probe(
    servers: Sequence[tuple[str, int]],
    settings: ProbeSettings,
    kod: KodMemory | None,
    host: ProbeHost,
    done: Callable[[ProbeResult], None],
    *,
    first_sync: bool = False,
    nts: Optional[NtsProbe] = None,
) -> None:
    """Probe servers in order on `host`'s loop (a Fleet or a LocalLoop); `done(result)` is
    called there. Nothing blocks the loop: names are looked up through host.run_blocking,
    and every query waits on the loop (probe_pass.py).

    A first pass uses the short settings.timeout_s so that silent servers early in the
    list cost little; when it finds no server and some of them only timed out, one more
    pass with settings.retry_timeout_s gives slow (far, loaded) servers their chance.

    `first_sync`: no good sync yet since the agent started (a host whose RTC died may be
    years off). The panic limit is then waived, as ntpd -g and chrony's makestep do, for an
    offset that the next passing server confirms (the falseticker rule); a list of one
    server applies it unconfirmed and says so. Afterwards the limit stands.

    `nts`: which servers are NTS servers (and their NTS-KE ports), and the agent's NTS
    client; those are asked only with NTS (probe_nts.py).
    """
    run = _ProbeRun(servers, settings, kod or KodMemory(), host, done, first_sync)
    run.nts = nts
    if all(is_ip_literal(h) for h, _ in servers):
        run.with_addresses(resolve_all(servers, settings.resolve_timeout_s))  # no wait
        return
    host.run_blocking(lambda: resolve_all(servers, settings.resolve_timeout_s), run.looked_up)


class _ProbeRun:
    """One probe's passes: the quick one, and the slow one when the quick found only
    silence."""

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        settings: ProbeSettings,
        kod: KodMemory,
        host: ProbeHost,
        done: Callable[[ProbeResult], None],
        first_sync: bool,
    ) -> None:
        self.servers = servers
        self.kod = kod
        self.host = host
        self.done = done
        self.panic_s: float | None = None
        if first_sync and math.isfinite(settings.panic_offset_s):
            self.panic_s = settings.panic_offset_s
            settings = replace(settings, panic_offset_s=math.inf)
        self.settings = settings
        self.resolved: dict[tuple[str, int], Resolved] = {}
        self.nts: Optional[NtsProbe] = None

    def looked_up(
        self, resolved: dict[tuple[str, int], Resolved] | None, error: BaseException | None
    ) -> None:
        if error is not None or resolved is None:  # resolve_all returns reasons: a bug
            why = f"name lookup failed: {error!r}"
            resolved = {(h, p): why for h, p in self.servers}
        self.with_addresses(resolved)

    def with_addresses(self, resolved: dict[tuple[str, int], Resolved]) -> None:
        self.resolved = resolved
        self._pass(self.settings, self._first_done)

    def _pass(self, settings: ProbeSettings, then: Callable[[ProbeResult], None]) -> None:
        def steps_for(i: int, on_answer: Callable[[], None]) -> ServerSteps:
            h, p = self.servers[i]
            ke_port = self.nts.entries.get((h, p)) if self.nts is not None else None
            if ke_port is not None:
                # Here only for a list that names an NTS server (sync_run.py says why).
                from clockfleet.agent.probe_nts import nts_server_steps

                assert self.nts is not None
                client = self.nts.client
                return nts_server_steps(
                    h, p, ke_port, settings, self.resolved[(h, p)], client, on_answer
                )
            return probe_server_steps(h, p, settings, self.resolved[(h, p)], on_answer)

        Pass(self.servers, settings, self.kod, self.panic_s, steps_for, self.host, then).start()

    def _first_done(self, first: ProbeResult) -> None:
        slow = self.settings.retry_timeout_s
        timeouts = any(a.outcome == "timeout" for a in first.tried)
        if first.ok or slow <= self.settings.timeout_s or not timeouts:
            self.done(first)
            return
        self._pass(replace(self.settings, timeout_s=slow), self._second_done)

    def _second_done(self, second: ProbeResult) -> None:
        quick, slow = self.settings.timeout_s, self.settings.retry_timeout_s
        retried = f"no server answered within {quick:g} s; retried at {slow:g} s"
        second.note = clip_text(f"{retried}; {second.note}" if second.note else retried)
        self.done(second)
