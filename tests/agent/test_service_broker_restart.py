"""Mosquitto dies mid-run: every report the agent makes meanwhile arrives once the broker is
back (QoS 1, persistent session), and the agent reconverges without a restart."""

from __future__ import annotations

import json
from pathlib import Path

from tests.agent.servicekit import (
    PREFIX,
    Publisher,
    Watcher,
    hosted,
    make_agent,
    make_keys,
    wait_until,
)


def test_reports_made_while_the_broker_is_down_arrive_when_it_is_back(
    broker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 1, [(ntp.host, ntp.port)])
    # A reader with a persistent session: the broker keeps its QoS 1 messages across the
    # restart (persistence is on in the fixture's config).
    reader = Watcher(broker, f"{PREFIX}/agents/a1/report", persistent=True)
    agent = make_agent(broker, "a1", keys=keys, state_dir=short_tmp / "state")
    made: list[str] = []
    agent.observers.on_report = lambda a, report: made.append(
        json.loads(a.last_report_payload)["at"]
    )
    try:
        with hosted(agent) as fleet:
            reader.wait_for(lambda m: m["list_version"] == 1)
            pub.close()
            reader.close()
            broker.stop()  # SIGTERM: mosquitto saves its sessions and retained messages
            wait_until(lambda: not agent.connected, timeout_s=10)

            for n in (2, 3):  # two syncs while the broker is away
                fleet.call_soon_threadsafe(agent.sync_now)
                wait_until(lambda n=n: len(made) >= n, timeout_s=10)
            down = made[1:]

            broker.restart()
            try:
                reader = Watcher(broker, f"{PREFIX}/agents/a1/report", persistent=True)
                wait_until(lambda: {m["at"] for m in reader.payloads()} >= set(down), 15)

                # reconverges: a new list after the restart is followed without restarting
                pub = Publisher(broker, keys)
                pub.server_list("r1", 2, [(ntp.host, ntp.port)])
                reader.wait_for(lambda m: m["list_version"] == 2, timeout_s=10)
                assert agent.counters["broker-lost"] == 1
                pub.close()
                reader.close()
            finally:
                broker.stop()
    finally:
        broker.stop()


def test_a_restarted_agent_with_no_broker_keeps_time_from_its_cache(
    broker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 4, [(ntp.host, ntp.port)])
    state = short_tmp / "state"
    first = make_agent(broker, "a1", keys=keys, state_dir=state)
    with hosted(first):
        wait_until(lambda: first.reports_acked >= 1)
    pub.close()
    broker.stop()

    again = make_agent(broker, "a1", keys=keys, state_dir=state)
    with hosted(again):
        wait_until(lambda: again.last_report is not None)
        assert not again.connected
    assert again.last_report.ok
    assert again.last_report.list_version == 4
    assert again.last_report.server.host == ntp.host
