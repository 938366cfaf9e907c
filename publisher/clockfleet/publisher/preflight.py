"""`clockfleet publish`'s preflight: ask every new or moved server before its list goes out.

For each region list the run would publish, every server that is new in the list or at
another position than in the broker's copy is queried from this host, all at once, with the
agent's own sample burst and reply checks (`clockfleet.ntp`). The panic limit and the
falseticker rule are the agent's decision among servers, not a check of one server, so they
do not apply here: the line says the offset, stratum and delay, and the outcome.

A server that fails blocks the publish (exit 2, nothing sent) unless --force. Some servers
answer only from the PBXs' networks, never from the publisher's host: that is what --force
(or --no-preflight) is for, and every blocking message says so.

Two entries of one list that resolve to the same address (a name and its address, an IPv4
address and its IPv4-mapped form, a CNAME and its target) are one server to an agent, which
counts a server once by address: the second can never confirm the first's offset, so the
list is weaker than it reads. Every entry of such a list is looked up, and a shared address
blocks the publish like a failure.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence
from dataclasses import dataclass

from clockfleet.ntp.checks import Failure, ProbeSettings, Sample
from clockfleet.ntp.exchange import BurstResult, run_steps, sample_burst
from clockfleet.ntp.lookup import SockAddr, addresses, host_key, is_ip_literal
from clockfleet.ntp.nts_exchange import NtsClient, nts_burst_steps
from clockfleet.ntp.nts_ke import KE_PORT
from clockfleet.ntp.nts_tls import NtsTrust
from clockfleet.publisher.broker_copies import OnBroker
from clockfleet.publisher.fleetfile import Fleet
from clockfleet.publisher.plan import Plan
from clockfleet.publisher.wire_objects import JsonValue, WireObject

TIMEOUT_S = 1.0  # the whole sample burst of one server
RESOLVE_TIMEOUT_S = 2.0  # every name, looked up at once
# The agent's checks, without the panic limit: how far off a server is, is shown, not judged.
SETTINGS = ProbeSettings(timeout_s=TIMEOUT_S, panic_offset_s=float("inf"))
PBX_NOTE = (
    "some servers answer only from the PBXs' networks, not from this host: if these are such "
    "servers, publish with --force (or --no-preflight)"
)


# NTS servers are asked with NTS, as agents ask them: their certificate must chain to the
# system's CA store or to the certificates in this file (PEM), when the variable is set.
NTS_CA_ENV = "CLOCKFLEET_NTS_CA_FILE"
NTS_KE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Target:
    region: str
    host: str
    port: int
    nts_ke_port: int | None = None  # an NTS server: asked only with NTS, on this NTS-KE port


@dataclass(frozen=True)
class Result:
    target: Target
    outcome: str
    detail: str = ""
    sample: Sample | None = None

    @property
    def ok(self) -> bool:
        return self.sample is not None


def targets(the_plan: Plan, fleet: Fleet, on_broker: OnBroker) -> list[Target]:
    """Every server of a region list about to go out that is new or at another position."""
    out: list[Target] = []
    for change in the_plan.of("publish"):
        if change.kind != "region":
            continue
        have = on_broker.get(("region", change.ident))
        old = _positions(have.obj) if have is not None and have.obj is not None else []
        for position, server in enumerate(fleet.regions[change.ident].servers):
            key = (server.host, server.port)
            if position >= len(old) or old[position] != key:
                ke_port = (server.nts_ke_port or KE_PORT) if server.nts else None
                out.append(Target(change.ident, server.host, server.port, ke_port))
    return out


def _positions(obj: WireObject) -> list[tuple[JsonValue, JsonValue]]:
    """(host, port) of each server of a broker copy, in its order; a port the copy leaves
    out is None (not 123), so such an entry counts as moved and is asked."""
    servers = obj.get("servers") or []
    if not isinstance(servers, list):
        return []
    return [
        (s.get("host"), s.get("port")) if isinstance(s, dict) else (None, None) for s in servers
    ]


def query(target: Target) -> Result:
    """One server, as an agent would ask it (its first address)."""
    found = addresses(target.host, target.port)
    if isinstance(found, str):
        return Result(target, "unresolvable", found)
    if target.nts_ke_port is not None:
        burst = _nts_burst(target, found[:1])
    else:
        family, sockaddr = found[0]
        burst = sample_burst(family, sockaddr, SETTINGS)
    if burst.sample is not None:
        return Result(target, "ok", sample=burst.sample)
    failure = burst.failure or Failure("timeout", "no answer")
    return Result(target, failure.outcome, failure.detail)


def _nts_burst(target: Target, found: list[tuple[int, SockAddr]]) -> BurstResult:
    """NTS-KE, then an authenticated burst: never plain NTP to an NTS server."""
    ca_file = os.environ.get(NTS_CA_ENV)
    client = NtsClient(
        trust=NtsTrust(ca_files=(ca_file,) if ca_file else ()), ke_timeout_s=NTS_KE_TIMEOUT_S
    )
    key = (target.host, target.nts_ke_port or KE_PORT, target.port)
    burst, _address = run_steps(nts_burst_steps(client, key, found, SETTINGS))
    return burst


def run(found: Sequence[Target]) -> list[Result]:
    """Query every target concurrently; each has RESOLVE_TIMEOUT_S + TIMEOUT_S at most (an NTS
    server NTS_KE_TIMEOUT_S more, for its handshake)."""
    if not found:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(found)))
    try:
        futures = [pool.submit(query, t) for t in found]
        nts = any(t.nts_ke_port is not None for t in found)
        budget = RESOLVE_TIMEOUT_S + TIMEOUT_S + 0.5 + (NTS_KE_TIMEOUT_S + 0.5 if nts else 0)
        concurrent.futures.wait(futures, budget)
        results = []
        for target, future in zip(found, futures):
            if future.done():
                results.append(future.result())
            else:
                results.append(
                    Result(target, "unresolvable", f"name lookup took over {RESOLVE_TIMEOUT_S:g} s")
                )
        return results
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


NTS_BY_ADDRESS = (
    "note: an NTS server given by address: Debian 11's chronyd (4.0) never asks it with "
    "NTS-KE; name it as its certificate does"
)


def line(result: Result) -> str:
    t = result.target
    host = f"[{t.host}]" if ":" in t.host else t.host
    head = f"preflight  {t.region}  {host}:{t.port}  {result.outcome}"
    s = result.sample
    if s is None:
        text = f"{head}  {result.detail}"
    else:
        text = f"{head}  offset {s.offset_s:+.6f} s stratum {s.stratum} delay {s.delay_s:.6f} s"
    if t.nts_ke_port is not None and is_ip_literal(t.host):
        text += f"  ({NTS_BY_ADDRESS})"
    return text


@dataclass(frozen=True)
class Shared:
    """Two entries of one region list that resolve to a common address."""

    region: str
    first: tuple[str, int]
    second: tuple[str, int]
    address: str


def shared_addresses(
    the_plan: Plan, fleet: Fleet, timeout_s: float = RESOLVE_TIMEOUT_S
) -> list[Shared]:
    """Entries of a region list about to go out that resolve to an address an earlier entry
    of the same list resolves to (names looked up at once, within timeout_s)."""
    lists = {
        c.ident: [(s.host, s.port) for s in fleet.regions[c.ident].servers]
        for c in the_plan.of("publish")
        if c.kind == "region"
    }
    entries = sorted({e for servers in lists.values() for e in servers})
    if not entries:
        return []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(32, len(entries)))
    try:
        futures = {e: pool.submit(addresses, *e) for e in entries}
        concurrent.futures.wait(futures.values(), timeout_s)
        found: dict[tuple[str, int], list[str]] = {}
        for e, f in futures.items():
            got = f.result() if f.done() else "not looked up in time"
            if not isinstance(got, str):  # a string says why there is no address
                found[e] = [k for _, sockaddr in got if (k := host_key(str(sockaddr[0])))]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    out: list[Shared] = []
    for region, servers in sorted(lists.items()):
        owner: dict[str, tuple[str, int]] = {}
        for entry in servers:
            for key in found.get(entry, []):
                earlier = owner.setdefault(key, entry)
                if earlier != entry:
                    out.append(Shared(region, earlier, entry, key))
                    break
    return out


def shared_line(s: Shared) -> str:
    def name(e: tuple[str, int]) -> str:
        return f"[{e[0]}]:{e[1]}" if ":" in e[0] else f"{e[0]}:{e[1]}"

    return (
        f"preflight  {s.region}  {name(s.second)}  same-address  {s.address}, as "
        f"{name(s.first)}: an agent counts them as one server (no confirmation between them)"
    )


@dataclass(frozen=True)
class Options:
    """How the operator asked the preflight to run."""

    skip: bool  # --no-preflight
    force: bool  # --force: publish anyway
    dry_run: bool  # --dry-run: say whether a publish would be blocked


def check(options: Options, the_plan: Plan, fleet: Fleet, on_broker: OnBroker) -> str | None:
    """Run the preflight and print it; the reason it blocks the run, else None."""
    if options.skip:
        return None
    results = run(targets(the_plan, fleet, on_broker))
    for result in results:
        print(line(result))
    shared = shared_addresses(the_plan, fleet)
    for s in shared:
        print(shared_line(s))
    failed = [r for r in results if not r.ok]
    if not failed and not shared:
        if results:
            print(f"preflight: {len(results)} new or moved servers answered, checks passed")
        return None
    parts = []
    if failed:
        parts.append(f"{len(failed)} of {len(results)} new or moved servers failed from this host")
    if shared:
        parts.append(f"{len(shared)} list entries share an address with an earlier entry")
    what = "preflight: " + "; ".join(parts)
    if options.dry_run:
        print(f"{what}; a publish would be blocked ({PBX_NOTE})")
        return None
    if options.force:
        print(f"{what}; publishing anyway (--force)")
        return None
    return f"{what}; nothing published. {PBX_NOTE}"
