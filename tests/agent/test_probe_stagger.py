"""Staggered failover: a server silent past a short stagger does not hold up the next one,
while the operator's order still decides which answer wins; a server that answers in its
usual time means no other server is asked at all."""

from __future__ import annotations

import time

from clockfleet.agent.probe import ProbeSettings, probe
from clockfleet.agent.server_memory import KodMemory
from tests.agent.fakentp import FakeNtpServer

STAGGERED = ProbeSettings(timeout_s=0.3, retry_timeout_s=0, stagger_s=0.1, samples=2)


def test_three_silent_servers_cost_one_timeout_not_three():
    with (
        FakeNtpServer("silent", host="127.0.0.61") as a,
        FakeNtpServer("silent", host="127.0.0.62") as b,
        FakeNtpServer("silent", host="127.0.0.63") as c,
        FakeNtpServer("ok", host="127.0.0.64") as good,
    ):
        started = time.monotonic()
        result = probe([a.address, b.address, c.address, good.address], STAGGERED)
        took = time.monotonic() - started
    assert [t.outcome for t in result.tried] == ["timeout", "timeout", "timeout", "ok"]
    assert result.chosen is not None and result.chosen.port == good.port
    # sequentially this is 3 x 0.3 s; staggered, every server is asked within 0.3 s
    assert took < 3 * STAGGERED.timeout_s


def test_a_server_that_answers_in_its_usual_time_means_no_other_is_asked():
    with (
        FakeNtpServer("ok", host="127.0.0.65") as first,
        FakeNtpServer("ok", host="127.0.0.66") as second,
    ):
        result = probe([first.address, second.address], STAGGERED)
        time.sleep(0.15)  # longer than the stagger: a late start would show now
    assert [t.outcome for t in result.tried] == ["ok", "not-tried"]
    assert second.requests == 0


def test_a_slow_first_server_still_wins_over_a_faster_later_one():
    # the first answers after 0.2 s (past the stagger, inside the timeout): the second is
    # asked meanwhile and answers at once, yet the operator's order decides
    with (
        FakeNtpServer("ok", host="127.0.0.67", delays_s=(0.2, 0.2)) as slow,
        FakeNtpServer("ok", host="127.0.0.68") as fast,
    ):
        result = probe([slow.address, fast.address], STAGGERED)
        assert fast.requests >= 1
    assert result.chosen is not None and result.chosen.port == slow.port
    assert result.tried[1].outcome == "not-tried"
    assert "earlier server won" in (result.tried[1].detail or "")


def test_the_stagger_is_never_shorter_than_a_far_servers_usual_round_trip():
    kod = KodMemory()
    with (
        FakeNtpServer("ok", host="127.0.0.69", delays_s=(0.15,) * 8) as far,
        FakeNtpServer("ok", host="127.0.0.70") as second,
    ):
        settings = ProbeSettings(timeout_s=1.0, retry_timeout_s=0, stagger_s=0.1, samples=1)
        probe([far.address, second.address], settings, kod)  # learns the 0.15 s round trip
        asked_before = second.requests
        result = probe([far.address, second.address], settings, kod)
        assert second.requests == asked_before
    assert result.chosen is not None and result.chosen.port == far.port


def test_without_a_stagger_servers_are_asked_one_by_one():
    one_by_one = ProbeSettings(timeout_s=0.2, retry_timeout_s=0, stagger_s=0, samples=1)
    with (
        FakeNtpServer("silent", host="127.0.0.71") as a,
        FakeNtpServer("ok", host="127.0.0.72") as good,
    ):
        started = time.monotonic()
        result = probe([a.address, good.address], one_by_one)
        took = time.monotonic() - started
    assert [t.outcome for t in result.tried] == ["timeout", "ok"]
    assert took >= one_by_one.timeout_s
