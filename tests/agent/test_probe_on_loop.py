"""The probe runs on its host's event loop: NTP queries are sockets the loop watches, so a
fleet of agents waits on its servers from one thread, and a silent server never holds the
loop up. Queries still out when the choice is made are dropped and their sockets closed."""

from __future__ import annotations

import gc
import os
import socket
import time
import weakref
from datetime import datetime
from datetime import timezone as timezone_utc_mod

from clockfleet.agent import full_collections
from clockfleet.agent.backend_choice import make_backend
from clockfleet.agent.fleet import Fleet
from clockfleet.agent.localloop import LocalLoop
from clockfleet.agent.probe import (
    KodMemory,
    ProbeResult,
    ProbeSettings,
    probe_server_steps,
    start_probe,
)
from clockfleet.agent.probe_pass import Pass
from clockfleet.agent.report import SyncJob
from clockfleet.agent.sync import needs_worker
from clockfleet.protocol.messages import Server, ServerList
from tests.agent.fakentp import FakeNtpServer

QUICK = ProbeSettings(timeout_s=0.3, retry_timeout_s=0, stagger_s=0.1, samples=2)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_silent_server_does_not_hold_up_the_fleet_loop():
    fleet = Fleet(workers=0)
    results: list[ProbeResult] = []
    ticks: list[float] = []
    with FakeNtpServer("silent", host="127.0.0.81") as silent:
        started = time.monotonic()
        start_probe([silent.address], QUICK, None, fleet, results.append)
        fleet.call_later(0.02, lambda: ticks.append(time.monotonic() - started))
        assert fleet.run_until(lambda: bool(results), timeout_s=5)
    fleet.close()
    assert results[0].tried[0].outcome == "timeout"
    # the timer ran on time while the query was still waiting for its answer
    assert ticks and ticks[0] < QUICK.timeout_s


def test_many_probes_on_one_loop_each_get_their_own_answer(chrony_server):
    ntp = chrony_server()
    fleet = Fleet(workers=0)
    results: list[ProbeResult] = []
    before = open_descriptors()
    for _ in range(40):
        start_probe([(ntp.host, ntp.port)], ProbeSettings(), KodMemory(), fleet, results.append)
    assert fleet.run_until(lambda: len(results) == 40, timeout_s=10)
    assert all(r.ok and r.chosen is not None for r in results)
    assert all(r.chosen.requests == ProbeSettings().samples for r in results if r.chosen)
    assert open_descriptors() == before  # every query's socket closed
    fleet.close()


def test_a_query_still_out_when_an_earlier_server_wins_is_dropped_and_closed():
    loop = LocalLoop()
    results: list[ProbeResult] = []
    with (
        FakeNtpServer("ok", host="127.0.0.82", delays_s=(0.15, 0.0)) as slow,
        FakeNtpServer("silent", host="127.0.0.83") as silent,
    ):
        before = open_descriptors()
        start_probe([slow.address, silent.address], QUICK, None, loop, results.append)
        loop.run_until(lambda: bool(results))
        after = open_descriptors()
        asked = silent.wait_for_requests(1, 1.0)
    assert asked  # its stagger ran out while the first was slow
    assert results[0].chosen is not None and results[0].chosen.port == slow.port
    assert results[0].tried[1].outcome == "not-tried"
    assert after == before


def test_a_probe_whose_query_fails_unexpectedly_still_ends_with_an_outcome():
    def broken_steps(i, on_answer):
        raise RuntimeError("a bug in a query")
        yield  # a generator, as the real steps are

    loop = LocalLoop()
    results: list[ProbeResult] = []
    Pass([("192.0.2.1", 123)], QUICK, KodMemory(), None, broken_steps, loop, results.append).start()
    loop.run_until(lambda: bool(results))
    attempt = results[0].tried[0]
    assert not results[0].ok
    assert attempt.outcome == "bad-packet" and "a bug in a query" in (attempt.detail or "")


def test_a_cancelled_timer_lets_go_of_what_its_callback_holds():
    class State:
        pass

    loop = LocalLoop()
    state = State()
    held = weakref.ref(state)
    loop.call_later(60, lambda s=state: s).cancel()
    del state
    assert held() is None


def test_the_fleet_loop_runs_full_collections_itself_and_restores_the_threshold(monkeypatch):
    monkeypatch.setattr(full_collections, "FULL_GC_INTERVAL_S", 0.0)
    threshold = gc.get_threshold()
    gc.disable()  # only the fleet's own collection may free the cycle below
    try:
        fleet = Fleet(workers=0)
        fleet.run_until(lambda: True, timeout_s=1)
        assert gc.get_threshold()[2] > threshold[2]  # no automatic full collections

        class Node:
            pass

        node = Node()
        node.me = node  # a cycle: reference counting alone never frees it
        gone = weakref.ref(node)
        del node
        gc.collect(1)  # young collections happened: something may have aged
        fleet.call_later(0.05, lambda: None)
        fleet.run_until(lambda: gone() is None, timeout_s=2)
        fleet.close()
    finally:
        gc.enable()
    assert gone() is None
    assert gc.get_threshold() == threshold


def _job(timezone: str | None) -> SyncJob:
    servers = ServerList(
        schema="clock.servers/1",
        region="r1",
        version=1,
        issued_at=datetime.now(timezone_utc_mod.utc),
        servers=[Server(host="127.0.0.1", port=123)],
    )
    return SyncJob(servers, None, timezone)


def test_a_sync_that_only_measures_finishes_on_the_loop(tmp_path):
    observe, chrony = make_backend("observe"), make_backend("chrony")
    assert not needs_worker(_job(None), observe, tmp_path)
    assert not needs_worker(_job("Europe/Paris"), observe, None)
    assert needs_worker(_job("Europe/Paris"), observe, tmp_path)  # writes /etc/localtime
    assert needs_worker(_job(None), chrony, tmp_path)  # runs chronyc


def test_full_collections_come_back_only_when_the_last_running_fleet_closes():
    threshold = gc.get_threshold()
    first, second = Fleet(workers=0), Fleet(workers=0)
    first.run_until(lambda: True, timeout_s=1)
    second.run_until(lambda: True, timeout_s=1)
    first.close()
    assert gc.get_threshold()[2] > threshold[2]  # the second still runs
    second.close()
    assert gc.get_threshold() == threshold


def test_each_address_socket_is_watched_even_when_it_reuses_the_last_ones_number():
    # The first address's socket is closed before the second's is opened, which then often
    # gets the same descriptor number; epoll forgot the closed one, so the loop must be told
    # to watch the new socket (else its answer is read only when the wait runs out).
    fleet = Fleet(workers=0)
    watched: list[int] = []

    class Recording:
        def __getattr__(self, name):
            return getattr(fleet, name)

        def watch_readable(self, fd, fn):
            watched.append(fd)
            fleet.watch_readable(fd, fn)

    results: list[ProbeResult] = []
    settings = ProbeSettings(timeout_s=0.2, retry_timeout_s=0, stagger_s=0, samples=1)
    with (
        FakeNtpServer("silent", host="127.0.0.84") as silent,
        FakeNtpServer("ok", host="127.0.0.85") as good,
    ):
        addresses = [(socket.AF_INET, silent.address), (socket.AF_INET, good.address)]

        def steps_for(i, on_answer):
            return probe_server_steps("two.example", 123, settings, addresses, on_answer)

        servers = [("two.example", 123)]
        Pass(servers, settings, KodMemory(), None, steps_for, Recording(), results.append).start()
        assert fleet.run_until(lambda: bool(results), timeout_s=5)
    fleet.close()
    assert results[0].tried[0].outcome == "ok"
    assert len(watched) == 2  # one per address, whatever their numbers
