"""A long-running agent follows its region's list: a new list means a new report within
jitter + 1 s; every bad payload is rejected with a logged reason, counted, and the last good
list stays in force."""

from __future__ import annotations

import json
import logging
import time

import pytest

from tests.agent.servicekit import (
    PREFIX,
    Publisher,
    Watcher,
    hosted,
    list_object,
    make_agent,
    wait_until,
)

TOPIC = f"{PREFIX}/regions/r1/servers"


@pytest.fixture
def reports(broker: str):
    w = Watcher(broker, f"{PREFIX}/agents/+/report")
    yield w
    w.close()


@pytest.fixture
def two_servers(chrony_server):
    return chrony_server(), chrony_server()


@pytest.fixture
def running(broker, keys, publisher, two_servers, short_tmp, reports):
    """An agent in force on list v5 (first server), having reported it."""
    first, _ = two_servers
    publisher.server_list("r1", 5, [(first.host, first.port)])
    agent = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "state")
    with hosted(agent):
        reports.wait_for(lambda m: m["list_version"] == 5)
        yield agent


def test_a_changed_list_is_reported_within_jitter_plus_one_second(
    running, publisher, two_servers, reports
):
    _, second = two_servers
    published = time.monotonic()
    publisher.server_list("r1", 6, [(second.host, second.port)])

    report = reports.wait_for(lambda m: m["list_version"] == 6, timeout_s=10)
    took = time.monotonic() - published

    assert report["server"] == {"host": second.host, "port": second.port}
    assert took <= 0.0 + 1.0, f"new list reported after {took:.2f} s (jitter 0)"


def _counted(agent, reason: str) -> bool:
    return agent.counters[reason] >= 1


BAD_PAYLOADS = {
    "malformed-json": lambda keys, pub: b'{"schema": "clock.servers/1", "region": ',
    "wrong-schema": lambda keys, pub: pub.signed(
        {**list_object("r1", 9, [("127.0.0.1", 123)]), "schema": "clock.profile/1"}
    ),
    # Over the contract's 64 KiB, under the shipped broker's max_packet_size (70000): the
    # agent's own limit is what refuses it.
    "oversized": lambda keys, pub: pub.signed(
        list_object("r1", 9, [("127.0.0.1", 123)], padding="x" * 66_000)
    ),
    "unsigned": lambda keys, pub: json.dumps(list_object("r1", 9, [("127.0.0.1", 123)])).encode(),
    "bad-signature": lambda keys, pub: _forged(pub),
    "replay": lambda keys, pub: pub.signed(list_object("r1", 4, [("127.0.0.1", 123)])),
    "id-mismatch": lambda keys, pub: pub.signed(list_object("r2", 9, [("127.0.0.1", 123)])),
}


def _forged(pub: Publisher) -> bytes:
    signed = json.loads(pub.signed(list_object("r1", 9, [("127.0.0.1", 123)])))
    signed["servers"] = [{"host": "192.0.2.66", "port": 123}]  # moved to an attacker's server
    return json.dumps(signed).encode()


@pytest.mark.parametrize("reason", sorted(BAD_PAYLOADS))
def test_a_bad_list_is_rejected_counted_and_the_last_good_list_stays(
    reason, running, publisher, keys, two_servers, reports, caplog
):
    caplog.set_level(logging.WARNING, logger="clockfleet.agent")
    first, _ = two_servers
    publisher.raw(TOPIC, BAD_PAYLOADS[reason](keys, publisher))

    wait_until(lambda: _counted(running, reason), timeout_s=10)
    assert any(reason in r.getMessage() and "rejected" in r.getMessage() for r in caplog.records)

    before = len(reports.payloads())
    publisher.resync("a1")
    wait_until(lambda: len(reports.payloads()) > before, timeout_s=10)
    latest = reports.payloads()[-1]
    assert latest["list_version"] == 5
    assert latest["server"] == {"host": first.host, "port": first.port}
    status = json.loads((running.state.path / "status.json").read_text())
    assert status["counters"][reason] == 1


def test_a_withdrawn_list_is_logged_and_the_last_good_list_stays(
    running, publisher, two_servers, reports, caplog
):
    caplog.set_level(logging.WARNING, logger="clockfleet.agent")
    publisher.raw(TOPIC, b"")

    wait_until(lambda: running.counters["withdrawn"] == 1, timeout_s=10)
    assert any("withdrawn" in r.getMessage() for r in caplog.records)
    before = len(reports.payloads())
    publisher.resync("a1")
    wait_until(lambda: len(reports.payloads()) > before, timeout_s=10)
    assert reports.payloads()[-1]["list_version"] == 5


def test_a_resync_command_runs_a_sync_at_once(running, publisher, reports):
    before = len(reports.payloads())
    first_at = reports.payloads()[-1]["at"]

    publisher.resync("a1")

    wait_until(lambda: len(reports.payloads()) > before, timeout_s=10)
    assert reports.payloads()[-1]["at"] > first_at
    assert running.counters["cmd-resync"] == 1


def test_a_profile_moves_the_agent_to_another_region(
    running, publisher, two_servers, reports, short_tmp
):
    _, second = two_servers
    publisher.server_list("r2", 11, [(second.host, second.port)], timezone="Asia/Tokyo")

    publisher.profile("a1", "r2", "America/Chicago", 1)

    report = reports.wait_for(lambda m: m["region"] == "r2", timeout_s=10)
    assert report["list_version"] == 11
    assert report["server"]["host"] == second.host
    assert report["timezone"] == "America/Chicago"
    assert report["profile_version"] == 1


def test_a_replayed_profile_is_rejected(running, publisher, reports):
    publisher.profile("a1", "r1", "Europe/Dublin", 2)
    reports.wait_for(lambda m: m.get("profile_version") == 2, timeout_s=10)

    publisher.profile("a1", "r1", "Asia/Tokyo", 1)

    wait_until(lambda: running.counters["replay"] == 1, timeout_s=10)
    assert running.profile.timezone == "Europe/Dublin"


def test_moving_back_to_a_region_readopts_its_list(running, publisher, two_servers, reports):
    _, second = two_servers
    publisher.server_list("r2", 11, [(second.host, second.port)])
    publisher.profile("a1", "r2", "Europe/Dublin", 1)
    reports.wait_for(lambda m: m["region"] == "r2", timeout_s=10)

    publisher.profile("a1", "r1", "Europe/Dublin", 2)

    back = reports.wait_for(lambda m: m["region"] == "r1" and m.get("profile_version") == 2)
    assert back["list_version"] == 5
    assert running.counters["replay"] == 0
