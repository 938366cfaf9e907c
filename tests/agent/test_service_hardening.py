"""A running agent under hostile input: nested JSON, handler bugs, command floods, stale
commands, a broker name that never resolves. Each is counted, logged, and the agent keeps
its last good state and goes on."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from clockfleet.protocol import codec
from tests.agent.servicekit import PREFIX, Watcher, hosted, make_agent, wait_until

LIST_TOPIC = f"{PREFIX}/regions/r1/servers"
NESTED = b'{"schema":"clock.servers/1","region":' + b"[" * 6000 + b"]" * 6000 + b"}"


@pytest.fixture
def reports(broker):
    w = Watcher(broker, f"{PREFIX}/agents/+/report")
    yield w
    w.close()


@pytest.fixture
def running(broker, keys, publisher, chrony_server, short_tmp, reports):
    """An agent on list v5, having reported it once."""
    ntp = chrony_server()
    publisher.server_list("r1", 5, [(ntp.host, ntp.port)])
    agent = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "state")
    with hosted(agent):
        reports.wait_for(lambda m: m["list_version"] == 5)
        yield agent


def cmd(issued_at: str | None = None) -> bytes:
    body = {"schema": "clock.cmd/1", "command": "resync"}
    if issued_at is not None:
        body["issued_at"] = issued_at
    return json.dumps(body).encode()


def test_a_deeply_nested_list_is_rejected_and_the_agent_goes_on(running, publisher, reports):
    publisher.raw(LIST_TOPIC, NESTED)
    wait_until(lambda: running.counters["malformed-json"] >= 1)
    publisher.server_list("r1", 6, [("127.0.0.1", 9)])
    reports.wait_for(lambda m: m["list_version"] == 6)
    assert running.counters["handler-errors"] == 0


def test_a_handler_that_raises_is_counted_and_the_message_still_acknowledged(
    running, publisher, reports, monkeypatch
):
    def broken(region: str, payload: bytes, cache: object) -> bool:
        raise RuntimeError("a bug in a handler")

    monkeypatch.setattr(running.in_force, "take_list", broken)
    publisher.raw(LIST_TOPIC, b"{}")
    wait_until(lambda: running.counters["handler-errors"] == 1)
    monkeypatch.undo()
    # acknowledged: the loop went on, and the broker does not deliver it again
    publisher.server_list("r1", 6, [("127.0.0.1", 9)])
    reports.wait_for(lambda m: m["list_version"] == 6)
    assert running.counters["handler-errors"] == 1


def test_a_flood_of_resync_commands_runs_one_sync(running, publisher, reports):
    before = running.reports_made
    for _ in range(20):
        publisher.command("a1", cmd())
    wait_until(lambda: running.counters["cmd-resync"] + running.counters["cmd-ignored"] == 20)
    assert (running.counters["cmd-resync"], running.counters["cmd-ignored"]) == (1, 19)
    wait_until(lambda: running.reports_made == before + 1)
    time.sleep(0.3)
    assert running.reports_made == before + 1


def test_a_command_older_than_the_bound_is_dropped_once_the_clock_is_good(running, publisher):
    stale = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))
    publisher.command("a1", cmd(stale))
    wait_until(lambda: running.counters["cmd-ignored"] == 1)
    assert running.counters["cmd-resync"] == 0


def test_a_fresh_command_with_its_issue_time_is_obeyed(running, publisher, reports):
    before = running.reports_made
    publisher.command("a1", cmd(codec.utcnow_iso()))
    wait_until(lambda: running.reports_made == before + 1)
    assert running.counters["cmd-resync"] == 1


@pytest.fixture
def hanging_broker_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    release = threading.Event()
    real = socket.getaddrinfo

    def slow(host, *args, **kwargs):
        if str(host).endswith(".example.test"):
            release.wait(20)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    yield
    release.set()


def test_a_broker_name_that_never_resolves_does_not_stall_the_other_agents(
    broker, keys, publisher, chrony_server, reports, hanging_broker_name
):
    ntp = chrony_server()
    publisher.server_list("r1", 5, [(ntp.host, ntp.port)])
    stuck = make_agent(broker, "stuck", keys=keys, brokers="mqtt://broker.example.test:1883")
    healthy = make_agent(broker, "a1", keys=keys)
    with hosted(stuck, healthy):
        started = time.monotonic()
        reports.wait_for(lambda m: m["agent"] == "a1" and m["list_version"] == 5)
        assert time.monotonic() - started < 5
        assert not stuck.connected
