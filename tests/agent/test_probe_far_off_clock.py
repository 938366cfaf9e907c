"""A host whose clock is far off (a dead RTC) is the job: the first sync since the agent
started may move it by any amount that two servers agree on; afterwards the panic limit
stands. The servers run ahead under libfaketime, since libfaketime cannot fake the kernel's
receive timestamps that the probe reads for T4."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from clockfleet import devstack
from clockfleet.agent.probe import ProbeResult, ProbeSettings, probe
from tests.agent.fakentp import FakeNtpServer

FAST = ProbeSettings(timeout_s=0.3, retry_timeout_s=0)
TWO_HOURS = 7200.0
Server = Callable[..., devstack.Daemon]


def addr(d: devstack.Daemon | FakeNtpServer) -> tuple[str, int]:
    return d.address if isinstance(d, FakeNtpServer) else (d.host, d.port)


def outcomes(result: ProbeResult) -> list[str]:
    return [a.outcome for a in result.tried]


def chosen_offset(result: ProbeResult) -> float:
    assert result.chosen is not None and result.chosen.sample is not None
    return result.chosen.sample.offset_s


@pytest.fixture
def two_hours_ahead(chrony_server: Server) -> list[devstack.Daemon]:
    return [chrony_server(fake_offset_s=TWO_HOURS), chrony_server(fake_offset_s=TWO_HOURS)]


def test_a_first_sync_applies_an_offset_beyond_the_panic_limit_that_two_servers_agree_on(
    two_hours_ahead: list[devstack.Daemon],
) -> None:
    result = probe([addr(d) for d in two_hours_ahead], FAST, first_sync=True)
    assert outcomes(result) == ["ok", "ok"]
    assert chosen_offset(result) == pytest.approx(TWO_HOURS, abs=0.01)
    assert result.note is not None and "panic limit" in result.note


def test_after_the_first_sync_the_panic_limit_stands(
    two_hours_ahead: list[devstack.Daemon],
) -> None:
    result = probe([addr(d) for d in two_hours_ahead], FAST, first_sync=False)
    assert not result.ok
    assert outcomes(result) == ["panic-offset", "panic-offset"]


def test_a_first_sync_never_applies_an_unconfirmed_offset_beyond_the_panic_limit(
    chrony_server: Server,
) -> None:
    ahead = chrony_server(fake_offset_s=TWO_HOURS)
    with FakeNtpServer("silent") as silent:
        result = probe([addr(ahead), addr(silent)], FAST, first_sync=True)
    assert not result.ok
    assert outcomes(result) == ["panic-offset", "timeout"]
    assert "no later server passed to confirm it" in (result.tried[0].detail or "")


def test_a_first_sync_refuses_two_servers_that_disagree_by_more_than_the_tolerance(
    chrony_server: Server,
) -> None:
    ahead, further = chrony_server(fake_offset_s=TWO_HOURS), chrony_server(fake_offset_s=9000.0)
    result = probe([addr(ahead), addr(further)], FAST, first_sync=True)
    assert not result.ok
    assert outcomes(result)[0] == "falseticker"


def test_a_single_server_list_applies_a_first_sync_beyond_the_panic_limit_and_says_so(
    chrony_server: Server,
) -> None:
    ahead = chrony_server(fake_offset_s=TWO_HOURS)
    result = probe([addr(ahead)], FAST, first_sync=True)
    assert chosen_offset(result) == pytest.approx(TWO_HOURS, abs=0.01)
    assert result.note is not None
    assert result.note.startswith("single server") and "panic limit" in result.note


@pytest.mark.parametrize(
    "spelling",
    ["localhost", "::ffff:127.0.0.1", "0x7f.0.0.1"],
    ids=["a name for it", "its IPv4-mapped IPv6 form", "a hex spelling"],
)
def test_one_lying_server_listed_twice_never_confirms_itself_on_a_first_sync(
    chrony_server: Server, spelling: str
) -> None:
    """A first sync steps any amount only on two servers' word; the same server under two
    spellings is one server (counted by the address it answered from)."""
    liar = chrony_server(address="127.0.0.1", fake_offset_s=TWO_HOURS)
    result = probe([("127.0.0.1", liar.port), (spelling, liar.port)], FAST, first_sync=True)
    assert not result.ok
    assert outcomes(result) == ["panic-offset", "ok"]
    assert "counted once" in (result.tried[1].detail or "")


def test_a_second_server_at_another_address_still_confirms_a_first_sync(
    two_hours_ahead: list[devstack.Daemon],
) -> None:
    """The rule above refuses a second spelling, not a second server."""
    first, second = two_hours_ahead
    result = probe([addr(first), (f"::ffff:{second.host}", second.port)], FAST, first_sync=True)
    assert result.ok
    assert chosen_offset(result) == pytest.approx(TWO_HOURS, abs=0.01)
