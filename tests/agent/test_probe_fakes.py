"""Answers no real server gives on purpose (our fake NTP server), each followed in the list
by a healthy real chronyd: the bad server gets its outcome, the chronyd is used."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet import devstack
from clockfleet.agent.probe import ProbeSettings, probe
from tests.agent.fakentp import BEHAVIOURS, FakeNtpServer
from tests.helpers import next_loopback_address

FAST = ProbeSettings(timeout_s=0.3)


@pytest.fixture(scope="module")
def healthy() -> Iterator[tuple[str, int]]:
    """One real chronyd for the whole module (every test only reads from it)."""
    rundir = Path(tempfile.mkdtemp(prefix="cf-", dir="/tmp"))
    daemon = devstack.start_chronyd_server(rundir, address=next_loopback_address(), stratum=3)
    yield (daemon.host, daemon.port)
    daemon.stop()
    shutil.rmtree(rundir, ignore_errors=True)


CASES = [
    ("kod", {"kiss": "RATE"}, "kod-rate"),
    ("kod", {"kiss": "DENY"}, "kod-deny"),
    ("kod", {"kiss": "RSTR"}, "kod-rstr"),
    ("kod", {"kiss": "INIT"}, "kod-other"),
    ("leap3", {}, "unsynchronised"),
    ("stratum0", {}, "bad-stratum"),
    ("stratum16", {}, "bad-stratum"),
    ("wrong-origin", {}, "bad-origin"),
    ("truncated", {}, "bad-packet"),
    ("zero-transmit", {}, "bad-packet"),
    ("zero-receive", {}, "bad-packet"),
    ("mode3", {}, "bad-packet"),
    ("version0", {}, "bad-packet"),
    ("slow-server", {}, "bad-packet"),
    ("far", {}, "too-far"),
    ("offset", {"offset_s": 2000.0}, "panic-offset"),
    ("silent", {}, "timeout"),
    ("spoof", {}, "timeout"),
]


def test_every_fake_behaviour_has_a_case() -> None:
    assert {b for b, _, _ in CASES} | {"ok"} == set(BEHAVIOURS)


@pytest.mark.parametrize(
    ("behaviour", "kwargs", "expected"),
    CASES,
    ids=[f"{b}-{kw.get('kiss', '')}".rstrip("-") for b, kw, _ in CASES],
)
def test_a_bad_server_gets_its_outcome_and_the_next_server_is_used(
    healthy: tuple[str, int], behaviour: str, kwargs: dict, expected: str
) -> None:
    with FakeNtpServer(behaviour, **kwargs) as fake:
        result = probe([fake.address, healthy], FAST)
        assert fake.requests >= 1
    assert [a.outcome for a in result.tried] == [expected, "ok"]
    assert result.tried[0].detail
    assert result.tried[0].sample is None
    assert result.chosen is result.tried[1]
    assert result.ok


def test_a_healthy_fake_is_ok() -> None:
    with FakeNtpServer("ok") as fake:
        result = probe([fake.address], FAST)
    assert result.ok
    assert result.chosen is not None and result.chosen.sample is not None
    assert result.chosen.sample.stratum == 2


def test_a_kiss_o_death_ends_the_burst_at_once() -> None:
    with FakeNtpServer("kod", kiss="INIT") as fake:
        probe([fake.address], ProbeSettings(timeout_s=0.3, samples=4))
        assert fake.requests == 1


def test_a_spoofed_reply_from_another_port_is_ignored_though_its_origin_is_right() -> None:
    with FakeNtpServer("spoof") as fake:
        result = probe([fake.address], FAST)
    assert [a.outcome for a in result.tried] == ["timeout"]


def test_the_spoofing_fake_really_sends_a_reply_a_naive_client_would_take() -> None:
    # Guards the test above: the forged answer does arrive at an unconnected socket.
    with FakeNtpServer("spoof") as fake, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(bytes([0x23]) + bytes(39) + (12345).to_bytes(8, "big"), fake.address)
        data, source = s.recvfrom(1024)
    assert source != fake.address
    assert int.from_bytes(data[24:32], "big") == 12345


def test_a_spoofed_reply_before_the_real_one_does_not_win(healthy: tuple[str, int]) -> None:
    with FakeNtpServer("spoof", offset_s=50.0) as fake:
        result = probe([fake.address, healthy], FAST)
    assert [a.outcome for a in result.tried] == ["timeout", "ok"]
    assert result.chosen is not None and result.chosen.sample is not None
    assert abs(result.chosen.sample.offset_s) < 0.005


def test_wrong_origin_replies_are_waited_out_not_taken() -> None:
    with FakeNtpServer("wrong-origin") as fake:
        result = probe([fake.address], FAST)
    assert result.tried[0].outcome == "bad-origin"
    assert "nonce" in (result.tried[0].detail or "")


def test_a_server_dropping_the_rest_of_a_burst_still_gives_its_sample_without_the_timeout() -> None:
    # ntpd's `restrict limited` drops back-to-back requests: once a sample is held, a later
    # answer is awaited only as long as it could still beat that sample's delay.
    settings = ProbeSettings(timeout_s=5.0, samples=4)
    with FakeNtpServer("silent", good_first=1) as fake:
        started = time.monotonic()
        result = probe([fake.address], settings)
        elapsed = time.monotonic() - started
        assert fake.requests == 2
    assert result.ok
    assert elapsed < settings.timeout_s / 2


def test_a_burst_takes_settings_samples_from_a_healthy_server(healthy: tuple[str, int]) -> None:
    one = probe([healthy], ProbeSettings(timeout_s=0.3, samples=1))
    assert one.chosen is not None and one.chosen.requests == 1
    many = probe([healthy], ProbeSettings(timeout_s=0.3, samples=8))
    assert many.chosen is not None and many.chosen.requests == 8


def test_the_lowest_delay_sample_of_the_burst_is_kept() -> None:
    # Neither the first (held back 0.2 s) nor the last (held back 9 ms) sample.
    with FakeNtpServer("ok", delays_s=(0.2, 0.0, 0.009)) as fake:
        result = probe([fake.address], ProbeSettings(timeout_s=2.0, samples=3))
        assert fake.requests == 3
    assert result.chosen is not None and result.chosen.sample is not None
    assert result.chosen.sample.delay_s < 0.006


def test_each_address_of_a_name_is_tried_in_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    # No DNS server here gives a name two addresses; the resolver's answer is stood in for.
    with (
        FakeNtpServer("silent", host="127.0.0.1") as silent,
        FakeNtpServer("ok", host="127.0.0.2") as good,
    ):
        answer = [
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", silent.port)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.2", good.port)),
        ]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answer)
        result = probe([("ntp.example.test", 123)], FAST)
        assert silent.requests == 1
    assert result.ok
    assert result.tried[0].address == "127.0.0.2"


def test_a_name_whose_addresses_all_fail_reports_the_first_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with (
        FakeNtpServer("leap3", host="127.0.0.1") as a,
        FakeNtpServer("stratum16", host="127.0.0.2") as b,
    ):
        answer = [
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.1", a.port)),
            (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("127.0.0.2", b.port)),
        ]
        monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answer)
        result = probe([("ntp.example.test", 123)], FAST)
        assert b.requests >= 1
    assert result.tried[0].outcome == "unsynchronised"
    assert (result.tried[0].detail or "").startswith("127.0.0.1: test 6: leap indicator 3")
    assert "and 1 more" in (result.tried[0].detail or "")
