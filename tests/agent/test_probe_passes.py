"""Two passes: a short timeout first so silent servers cost little, a long one for slow servers."""

from __future__ import annotations

from clockfleet.agent.probe import ProbeSettings, probe
from tests.agent.fakentp import FakeNtpServer
from tests.helpers import next_loopback_address

FAST = ProbeSettings(timeout_s=0.1, retry_timeout_s=1.5, samples=1)


def test_silent_servers_before_a_good_one_cost_only_the_short_timeout(chrony_server):
    good = chrony_server()
    with FakeNtpServer("silent", host=next_loopback_address()) as silent:
        result = probe([(silent.host, silent.port), (good.host, good.port)], FAST)
    assert result.ok and result.chosen.host == good.host
    assert result.tried[0].outcome == "timeout" and "0.1 s" in result.tried[0].detail
    assert result.note is None


def test_a_server_slower_than_the_first_timeout_is_reached_by_the_second_pass():
    with FakeNtpServer("ok", host=next_loopback_address(), delays_s=(0.3,) * 20) as slow:
        result = probe([(slow.host, slow.port)], FAST)
    assert result.ok and result.chosen.host == slow.host
    assert "retried at 1.5 s" in result.note


def test_no_second_pass_when_the_first_found_only_definite_failures():
    with FakeNtpServer("leap3", host=next_loopback_address()) as broken:
        result = probe([(broken.host, broken.port)], FAST)
    assert not result.ok and result.tried[0].outcome == "unsynchronised"
    assert broken.requests == 1


def test_second_pass_can_be_turned_off():
    settings = ProbeSettings(timeout_s=0.1, retry_timeout_s=0, samples=1)
    with FakeNtpServer("silent", host=next_loopback_address()) as silent:
        result = probe([(silent.host, silent.port)], settings)
    assert not result.ok and silent.requests == 1
