"""The one-shot agent (`--once`) in process: it settles on the broker's retained state without
fixed waits, and a list that arrives late (brokers that replay retained messages
asynchronously) is used as soon as it comes, not after the whole grace period."""

from __future__ import annotations

import time
from pathlib import Path

from clockfleet.agent.fleet import Fleet
from clockfleet.agent.once import OnceDriver
from tests.agent.servicekit import Publisher, make_agent, make_keys


def test_a_list_arriving_during_the_grace_period_is_synced_at_once(
    broker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    agent = make_agent(broker, "a1", keys=keys, once=True, profile_grace_s=30.0)
    driver = OnceDriver(agent)
    fleet = Fleet(workers=0)
    fleet.add(agent)
    pub = Publisher(broker, keys)
    try:
        assert fleet.run_until(lambda: driver.waiting_grace, 10)
        pub.server_list("r1", 3, [(ntp.host, ntp.port)])
        started = time.monotonic()
        assert fleet.run_until(lambda: driver.finished, 10)
    finally:
        pub.close()
        fleet.close()
    assert time.monotonic() - started < 30.0
    assert agent.last_report.ok and agent.last_report.list_version == 3
