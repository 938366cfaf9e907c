"""Many agents in one process share one selector thread (paho's external loop API)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from clockfleet.agent.fleet import Fleet
from tests.agent.servicekit import (
    PREFIX,
    Publisher,
    Watcher,
    hosted,
    make_agent,
    make_keys,
    wait_until,
)

N = 50


def test_fifty_agents_on_one_loop_all_report_a_newly_published_list(
    broker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 1, [(ntp.host, ntp.port)])
    reports = Watcher(broker, f"{PREFIX}/agents/+/report")
    agents = [make_agent(broker, f"a{i}", keys=keys) for i in range(N)]
    threads_before = {t.ident for t in threading.enumerate()}
    try:
        with hosted(*agents, workers=4):
            wait_until(lambda: all(a.reports_acked >= 1 for a in agents), timeout_s=30)
            # not a thread per client, nor per NTP query: one loop thread and the worker pool
            # (the probes' sockets are watched by the loop itself)
            new = [t.name for t in threading.enumerate() if t.ident not in threads_before]
            assert len(new) <= 1 + 4, new
            assert not [n for n in new if n.startswith("ntp")]

            pub.server_list("r1", 2, [(ntp.host, ntp.port)])

            def reported_v2() -> set[str]:
                return {m["agent"] for m in reports.payloads() if m["list_version"] == 2}

            wait_until(lambda: len(reported_v2()) == N, timeout_s=30)
    finally:
        pub.close()
        reports.close()
    assert reported_v2() == {f"a{i}" for i in range(N)}


def test_timers_run_in_order_and_cancelled_ones_do_not():
    fleet = Fleet(workers=0)
    ran: list[str] = []
    fleet.call_later(0.02, lambda: ran.append("second"))
    fleet.call_later(0.0, lambda: ran.append("first"))
    fleet.call_later(0.01, lambda: ran.append("cancelled")).cancel()
    assert fleet.run_until(lambda: len(ran) == 2, timeout_s=2)
    fleet.close()
    assert ran == ["first", "second"]


def test_blocking_work_runs_off_the_loop_thread_and_reports_back_on_it():
    fleet = Fleet(workers=2)
    seen: dict[str, object] = {}

    def work() -> int:
        seen["worker"] = threading.get_ident()
        return 42

    def done(result, error) -> None:
        seen["result"], seen["error"], seen["loop"] = result, error, threading.get_ident()

    fleet.call_later(0.0, lambda: fleet.run_blocking(work, done))
    assert fleet.run_until(lambda: "loop" in seen, timeout_s=5)
    fleet.close()
    assert seen["result"] == 42 and seen["error"] is None
    assert seen["loop"] == threading.get_ident() != seen["worker"]


def test_a_failing_callback_does_not_stop_the_loop():
    fleet = Fleet(workers=0)
    ran: list[int] = []
    fleet.call_later(0.0, lambda: 1 / 0)
    fleet.call_later(0.01, lambda: ran.append(1))
    assert fleet.run_until(lambda: ran, timeout_s=2)
    fleet.close()


def test_an_agent_added_while_running_starts(broker, short_tmp: Path):
    keys = make_keys(short_tmp / "keys")
    first = make_agent(broker, "a1", keys=keys)
    late = make_agent(broker, "a2", keys=keys)
    with hosted(first) as fleet:
        wait_until(lambda: first.connected)
        fleet.add(late)
        wait_until(lambda: late.connected, timeout_s=10)


def test_agent_sockets_do_not_wait_for_delayed_acks(broker, short_tmp: Path):
    import socket

    agent = make_agent(broker, "a1", keys=make_keys(short_tmp / "keys"))
    with hosted(agent):
        wait_until(lambda: agent.connected)
        sock = agent.link.client.socket()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_run_until_sees_a_socket_closed_by_its_last_write_without_waiting(broker):
    # `agent --once` ends this way: its DISCONNECT is the last write, and the socket it
    # closes is what the driver waits for; the loop must not block a whole turn after it
    agent = make_agent(broker, "closing", region=None)
    fleet = Fleet(workers=0)
    fleet.add(agent)
    try:
        assert fleet.run_until(lambda: agent.connected, timeout_s=10)
        agent.stop()
        started = time.monotonic()
        assert fleet.run_until(lambda: agent.closed, timeout_s=5)
        assert time.monotonic() - started < 1.0  # not the next keepalive sweep, 5 s on
    finally:
        fleet.close()
