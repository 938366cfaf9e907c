"""A report whose PUBACK came late may not have been stored (a NATS node whose store timed
out acknowledges after 4 s without keeping it): the agent sends it again a while later, and
again while the PUBACKs stay late, a bounded number of times, unless a newer report went
out meanwhile."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from clockfleet.agent import report_delivery as link
from clockfleet.agent.fleet import Fleet
from clockfleet.agent.service import Agent
from tests.agent.servicekit import (
    PREFIX,
    Publisher,
    Watcher,
    hosted,
    make_agent,
    make_keys,
    wait_until,
)


@contextlib.contextmanager
def reporting(
    broker: str, chrony_server, short_tmp: Path, agent_id: str
) -> Iterator[tuple[Agent, Watcher, Fleet]]:
    """An agent with a list to sync from, hosted, and a watcher of its report topic."""
    keys = make_keys(short_tmp / "keys")
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 1, [(ntp.host, ntp.port)])
    reports = Watcher(broker, f"{PREFIX}/agents/{agent_id}/report")
    agent = make_agent(broker, agent_id, keys=keys, poll_interval_s=3600)
    try:
        with hosted(agent) as fleet:
            yield agent, reports, fleet
    finally:
        pub.close()
        reports.close()


def sent(reports: Watcher) -> list[bytes]:
    return [payload for _, payload, _ in reports.messages]


def test_a_report_acknowledged_late_is_sent_again_a_bounded_number_of_times(
    broker, chrony_server, short_tmp: Path, monkeypatch
):
    monkeypatch.setattr(link, "SLOW_ACK_S", 0.0)  # every PUBACK counts as late
    monkeypatch.setattr(link, "RESEND_AFTER_S", 0.3)
    with reporting(broker, chrony_server, short_tmp, "slow-ack-1") as (agent, reports, _):
        copies = 1 + link.MAX_RESENDS
        wait_until(lambda: len(reports.messages) >= copies, timeout_s=15)
        time.sleep(1.0)  # three more resend delays: nothing more comes
        assert len(sent(reports)) == copies and len(set(sent(reports))) == 1
        assert agent.reports_made == 1
        assert agent.counters["report-slow-acks"] == link.MAX_RESENDS


def test_no_resend_when_the_puback_comes_in_its_usual_time(
    broker, chrony_server, short_tmp: Path, monkeypatch
):
    monkeypatch.setattr(link, "RESEND_AFTER_S", 0.3)
    with reporting(broker, chrony_server, short_tmp, "slow-ack-2") as (agent, reports, _):
        wait_until(lambda: agent.reports_acked >= 1, timeout_s=15)
        time.sleep(1.0)
        assert len(reports.messages) == 1
        assert agent.counters["report-slow-acks"] == 0


def test_an_older_report_is_never_sent_again_after_a_newer_one(
    broker, chrony_server, short_tmp: Path, monkeypatch
):
    monkeypatch.setattr(link, "SLOW_ACK_S", 0.0)
    monkeypatch.setattr(link, "RESEND_AFTER_S", 0.5)
    monkeypatch.setattr(link, "MAX_RESENDS", 1)
    with reporting(broker, chrony_server, short_tmp, "slow-ack-3") as (agent, reports, fleet):
        wait_until(lambda: agent.reports_acked >= 1, timeout_s=15)
        fleet.call_soon_threadsafe(agent.sync_now)  # a newer report before the resend
        wait_until(lambda: agent.reports_made >= 2, timeout_s=15)
        time.sleep(1.5)
        copies = sent(reports)
        first, newer = copies[0], copies[-1]
        assert first != newer
        assert first not in copies[copies.index(newer) :]  # never after the newer one
        assert copies.count(newer) == 2  # the newer one's own resend
