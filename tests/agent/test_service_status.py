"""Status: `online` on every connect with session = previous + 1 (persisted), `offline` on a
clean shutdown, and the last will `offline` with the same session when the connection dies.
Plus the local status file a PBX reads."""

from __future__ import annotations

import json
import socket
import time

import pytest

from clockfleet import devstack
from tests.agent.fakentp import FakeNtpServer
from tests.agent.servicekit import (
    PREFIX,
    Publisher,
    Watcher,
    hosted,
    make_agent,
    wait_until,
)


@pytest.fixture
def statuses(broker: str):
    w = Watcher(broker, f"{PREFIX}/agents/a1/status")
    yield w
    w.close()


def states(watcher: Watcher) -> list[tuple[str, int]]:
    """(state, session) in arrival order, repeats collapsed: Mosquitto may also fire the
    previous connection's will when the next one takes over its client id before it has
    read the DISCONNECT (eclipse/mosquitto#904) - the same offline with the same session."""
    out: list[tuple[str, int]] = []
    for m in watcher.payloads():
        item = (m["state"], m["session"])
        if not out or out[-1] != item:
            out.append(item)
    return out


def test_online_and_offline_carry_a_session_that_grows_across_restarts(
    broker, keys, statuses, short_tmp
):
    state = short_tmp / "state"
    with hosted(make_agent(broker, "a1", keys=keys, state_dir=state)):
        wait_until(lambda: ("online", 1) in states(statuses))
    wait_until(lambda: ("offline", 1) in states(statuses))

    with hosted(make_agent(broker, "a1", keys=keys, state_dir=state)):
        wait_until(lambda: ("online", 2) in states(statuses))
    wait_until(lambda: ("offline", 2) in states(statuses))
    assert states(statuses) == [("online", 1), ("offline", 1), ("online", 2), ("offline", 2)]


def test_the_will_says_offline_with_the_session_when_the_connection_dies(
    broker, keys, statuses, short_tmp
):
    agent = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "state")
    with hosted(agent) as fleet:
        wait_until(lambda: ("online", 1) in states(statuses))

        # Cut the TCP connection under the agent, as a crash or a network fault would.
        fleet.call_soon_threadsafe(lambda: agent.link.client.socket().shutdown(socket.SHUT_RDWR))

        wait_until(lambda: ("offline", 1) in states(statuses))
        # ... and it comes back by itself with the next session
        wait_until(lambda: ("online", 2) in states(statuses))
    assert states(statuses)[:3] == [("online", 1), ("offline", 1), ("online", 2)]


def test_status_message_is_retained_with_software_and_region(broker, keys, short_tmp):
    with hosted(make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "s")):
        later = Watcher(broker, f"{PREFIX}/agents/a1/status")
        try:
            status = later.wait_for(lambda m: m["state"] == "online")
        finally:
            later.close()
    assert status["schema"] == "clock.status/1"
    assert status["region"] == "r1"
    assert status["software"]


def test_status_file_says_trustworthy_after_a_good_sync(broker, keys, chrony_server, short_tmp):
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 3, [(ntp.host, ntp.port)], poll_interval_s=60)
    agent = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "s")
    with hosted(agent):
        wait_until(lambda: agent.reports_acked >= 1)
    pub.close()
    status = json.loads((short_tmp / "s" / "status.json").read_text())
    assert status["trustworthy"] is True
    assert status["synced"] is True
    assert status["list_version"] == 3
    assert status["server"] == f"{ntp.host}:{ntp.port}"
    assert "reason" not in status
    assert status["valid_until"] > status["at"]


def test_status_file_says_untrustworthy_with_a_reason_when_the_offset_is_large(
    broker, keys, short_tmp
):
    pub = Publisher(broker, keys)
    with FakeNtpServer("offset", offset_s=2.0) as far:
        pub.server_list("r1", 3, [(far.host, far.port)])
        agent = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "s")
        with hosted(agent):
            wait_until(lambda: agent.reports_acked >= 1)
    pub.close()
    status = json.loads((short_tmp / "s" / "status.json").read_text())
    assert status["synced"] is True  # observe: measured, not corrected
    assert status["trustworthy"] is False
    assert "exceeds" in status["reason"]


def test_status_file_says_never_synced_before_any_good_sync(broker, keys, short_tmp):
    pub = Publisher(broker, keys)
    with FakeNtpServer("silent") as silent:
        pub.server_list("r1", 3, [(silent.host, silent.port)])
        agent = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "s", probe_timeout_s=0.1)
        with hosted(agent):
            wait_until(lambda: agent.reports_acked >= 1)
    pub.close()
    status = json.loads((short_tmp / "s" / "status.json").read_text())
    assert status["trustworthy"] is False
    assert status["synced"] is False
    assert status["reason"]


def test_the_agent_rotates_to_a_live_broker_of_the_cluster(broker, keys, statuses):
    dead = f"mqtt://127.0.0.1:{devstack.free_port()}"
    agent = make_agent(broker, "a1", keys=keys, brokers=f"{dead},{broker.url}")
    with hosted(agent):
        statuses.wait_for(lambda m: m["state"] == "online")
        assert agent.connected


def test_an_agent_that_lost_its_state_resumes_the_session_from_the_broker(broker, keys, statuses):
    with hosted(make_agent(broker, "a1", keys=keys)):  # no state dir at all
        wait_until(lambda: ("online", 1) in states(statuses))
    wait_until(lambda: ("offline", 1) in states(statuses))

    again = make_agent(broker, "a1", keys=keys)
    with hosted(again):
        wait_until(lambda: ("online", 2) in states(statuses))
        assert again.counters["broker-lost"] == 0
    wait_until(lambda: ("offline", 2) in states(statuses))
    assert states(statuses) == [("online", 1), ("offline", 1), ("online", 2), ("offline", 2)]


def sync_once_into(state_dir, broker, keys, ntp) -> None:
    """One agent syncs once (list polled every 60 s) and leaves its state in state_dir."""
    pub = Publisher(broker, keys)
    pub.server_list("r1", 3, [(ntp.host, ntp.port)], poll_interval_s=60)
    first = make_agent(broker, "a1", keys=keys, state_dir=state_dir)
    with hosted(first):
        wait_until(lambda: first.reports_acked >= 1)
    pub.close()


def test_a_restart_keeps_a_recent_good_sync_trustworthy_until_it_goes_stale(
    broker, keys, chrony_server, short_tmp
):
    sync_once_into(short_tmp / "s", broker, keys, chrony_server())
    before = json.loads((short_tmp / "s" / "status.json").read_text())

    # restarted, its first sync still far off (start-up delay): the file is rewritten from
    # what the state dir remembers, not reset to "never synced"
    again = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "s", startup_delay_s=600)
    with hosted(again):
        wait_until(lambda: again.connected)
        after = json.loads((short_tmp / "s" / "status.json").read_text())
    assert after["written_at"] > before["written_at"]
    assert after["trustworthy"] is True
    assert after["last_good_at"] == before["last_good_at"]
    assert again.reports_made == 0


def test_a_restart_long_after_the_last_good_sync_is_not_trustworthy(
    broker, keys, chrony_server, short_tmp
):
    sync_once_into(short_tmp / "s", broker, keys, chrony_server())
    # three poll intervals ago, by the boot clock and the wall clock alike
    marker = short_tmp / "s" / "last_good.json"
    saved = json.loads(marker.read_text())
    marker.write_text(
        json.dumps({**saved, "boot_s": saved["boot_s"] - 180, "wall_s": saved["wall_s"] - 180})
    )

    again = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "s", startup_delay_s=600)
    with hosted(again):
        wait_until(lambda: again.connected)
    status = json.loads((short_tmp / "s" / "status.json").read_text())
    assert status["trustworthy"] is False
    assert "last good sync" in status["reason"] and "ago" in status["reason"]


def restarted_status(broker, keys, state_dir, wall_clock=time.time) -> dict:
    again = make_agent(broker, "a1", keys=keys, state_dir=state_dir, startup_delay_s=600)
    again.wall_clock = wall_clock
    with hosted(again):
        wait_until(lambda: again.connected)
    return json.loads((state_dir / "status.json").read_text())


def test_a_restart_after_the_wall_clock_went_back_is_not_trustworthy(
    broker, keys, chrony_server, short_tmp
):
    # A dead RTC: the report's `at` now lies 400 days "in the future"; its age is unknowable.
    sync_once_into(short_tmp / "s", broker, keys, chrony_server())
    status = restarted_status(
        broker, keys, short_tmp / "s", wall_clock=lambda: time.time() - 400 * 86400
    )
    assert status["trustworthy"] is False
    assert "cannot be known" in status["reason"]


def test_a_restart_after_the_wall_clock_jumped_ahead_is_not_trustworthy(
    broker, keys, chrony_server, short_tmp
):
    sync_once_into(short_tmp / "s", broker, keys, chrony_server())
    status = restarted_status(broker, keys, short_tmp / "s", wall_clock=lambda: time.time() + 5)
    assert status["trustworthy"] is False
    assert "cannot be known" in status["reason"]


def test_a_restart_on_another_boot_is_not_trustworthy(broker, keys, chrony_server, short_tmp):
    sync_once_into(short_tmp / "s", broker, keys, chrony_server())
    marker = short_tmp / "s" / "last_good.json"
    saved = json.loads(marker.read_text())
    marker.write_text(json.dumps({**saved, "boot_id": "another-boot"}))
    status = restarted_status(broker, keys, short_tmp / "s")
    assert status["trustworthy"] is False
    assert "cannot be known" in status["reason"]
