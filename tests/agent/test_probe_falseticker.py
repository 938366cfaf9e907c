"""Falseticker confirmation: a large offset is applied only when the next passing server
agrees; real chronyd under libfaketime for skewed clocks, the fake for odd combinations."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from clockfleet import devstack
from clockfleet.agent.probe import ProbeResult, ProbeSettings, probe
from tests.agent.fakentp import FakeNtpServer

FAST = ProbeSettings(timeout_s=0.3)
Server = Callable[..., devstack.Daemon]


def addr(d: devstack.Daemon) -> tuple[str, int]:
    return (d.host, d.port)


def outcomes(result: ProbeResult) -> list[str]:
    return [a.outcome for a in result.tried]


def chosen_offset(result: ProbeResult) -> float:
    assert result.chosen is not None and result.chosen.sample is not None
    return result.chosen.sample.offset_s


def test_a_lone_skewed_server_is_applied_unconfirmed_and_says_so(chrony_server: Server) -> None:
    skewed = chrony_server(fake_offset_s=3.0)
    result = probe([addr(skewed)], FAST)
    assert outcomes(result) == ["ok"]
    assert chosen_offset(result) == pytest.approx(3.0, abs=0.005)
    assert result.note is not None and result.note.startswith("single server")


def test_a_skewed_server_followed_by_a_healthy_one_is_a_falseticker(chrony_server: Server) -> None:
    skewed, healthy = chrony_server(fake_offset_s=-30.0), chrony_server()
    result = probe([addr(skewed), addr(healthy)], FAST)
    assert outcomes(result) == ["falseticker", "ok"]
    assert result.chosen is result.tried[1]
    assert abs(chosen_offset(result)) < 0.005
    detail = result.tried[0].detail or ""
    claimed, other = (float(x) for x in re.findall(r"([+-]\d+\.\d+) s", detail))
    assert claimed == pytest.approx(-30.0, abs=0.005)
    assert other == pytest.approx(0.0, abs=0.005)
    assert f"{healthy.host}:{healthy.port}" in detail


def test_two_servers_skewed_alike_confirm_each_other(chrony_server: Server) -> None:
    first, second = chrony_server(fake_offset_s=3.0), chrony_server(fake_offset_s=3.0)
    third = chrony_server()
    result = probe([addr(first), addr(second), addr(third)], FAST)
    assert outcomes(result) == ["ok", "ok", "not-tried"]
    assert result.chosen is result.tried[0]
    assert chosen_offset(result) == pytest.approx(3.0, abs=0.005)
    assert result.note is not None and "confirmed by" in result.note


def test_a_small_offset_needs_no_confirmation() -> None:
    with FakeNtpServer("offset", offset_s=0.4) as first, FakeNtpServer("ok") as second:
        result = probe([first.address, second.address], FAST)
        assert second.requests == 0
    assert outcomes(result) == ["ok", "not-tried"]
    assert result.note is None


def test_a_skewed_server_with_no_passing_server_after_it_is_applied_unconfirmed() -> None:
    with (
        FakeNtpServer("offset", offset_s=30.0) as skewed,
        FakeNtpServer("leap3") as unsynced,
    ):
        result = probe([skewed.address, unsynced.address], FAST)
    assert outcomes(result) == ["ok", "unsynchronised"]
    assert chosen_offset(result) == pytest.approx(30.0, abs=0.005)
    assert result.note is not None and "unconfirmed" in result.note


def test_the_confirming_server_may_come_after_failing_ones() -> None:
    with (
        FakeNtpServer("offset", offset_s=30.0) as skewed,
        FakeNtpServer("stratum16") as bad,
        FakeNtpServer("offset", offset_s=30.05) as agreeing,
        FakeNtpServer("ok") as spare,
    ):
        result = probe([skewed.address, bad.address, agreeing.address, spare.address], FAST)
        assert spare.requests == 0
    assert outcomes(result) == ["ok", "bad-stratum", "ok", "not-tried"]
    assert result.chosen is result.tried[0]


def test_a_disagreeing_second_faces_the_same_rule_with_the_server_after_it() -> None:
    with (
        FakeNtpServer("offset", offset_s=30.0) as a,
        FakeNtpServer("offset", offset_s=-20.0) as b,
        FakeNtpServer("offset", offset_s=-20.02) as c,
    ):
        result = probe([a.address, b.address, c.address], FAST)
    assert outcomes(result) == ["falseticker", "ok", "ok"]
    assert result.chosen is result.tried[1]
    assert chosen_offset(result) == pytest.approx(-20.0, abs=0.005)


def test_two_falsetickers_in_a_row_then_a_healthy_server() -> None:
    with (
        FakeNtpServer("offset", offset_s=30.0) as a,
        FakeNtpServer("offset", offset_s=-20.0) as b,
        FakeNtpServer("ok") as c,
        FakeNtpServer("ok") as d,
    ):
        result = probe([a.address, b.address, c.address, d.address], FAST)
    assert outcomes(result) == ["falseticker", "falseticker", "ok", "not-tried"]
    assert result.chosen is result.tried[2]


def test_a_list_of_one_healthy_server_says_it_was_not_cross_checked() -> None:
    with FakeNtpServer("ok") as only:
        result = probe([only.address], FAST)
    assert result.ok
    assert result.note is not None and result.note.startswith("single server")


def test_nothing_passing_means_no_choice_and_no_note() -> None:
    with FakeNtpServer("leap3") as a, FakeNtpServer("stratum16") as b:
        result = probe([a.address, b.address], FAST)
    assert not result.ok
    assert result.chosen is None
    assert result.note is None
    assert outcomes(result) == ["unsynchronised", "bad-stratum"]
