"""Kiss-o'-death memory: DENY/RSTR stop asking until the list changes, RATE backs off."""

from __future__ import annotations

import pytest

from clockfleet.agent.probe import ProbeSettings, probe
from clockfleet.agent.server_memory import KodMemory
from tests.agent.fakentp import FakeNtpServer

FAST = ProbeSettings(timeout_s=0.3)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kiss", ["DENY", "RSTR"])
def test_a_refusing_server_is_not_asked_again_until_reset(kiss: str) -> None:
    memory = KodMemory()
    with FakeNtpServer("kod", kiss=kiss) as fake, FakeNtpServer("ok") as good:
        first = probe([fake.address, good.address], FAST, memory)
        assert fake.requests == 1
        again = probe([fake.address, good.address], FAST, memory)
        assert fake.requests == 1  # nothing was sent to it
    outcome = f"kod-{kiss.lower()}"
    assert [a.outcome for a in first.tried] == [outcome, "ok"]
    assert [a.outcome for a in again.tried] == [outcome, "ok"]
    assert again.tried[0].detail == (
        f"skipped: {kiss} received, not asked again until the list changes"
    )
    assert again.tried[0].requests == 0


def test_reset_makes_a_refusing_server_asked_again() -> None:
    memory = KodMemory()
    with FakeNtpServer("kod", kiss="DENY") as fake:
        probe([fake.address], FAST, memory)
        memory.reset()
        fake.behaviour = "ok"  # the operator fixed it; the new list names it again
        result = probe([fake.address], FAST, memory)
        assert fake.requests > 1
    assert result.ok


def test_rate_backs_off_that_server_then_asks_again_after_the_back_off() -> None:
    clock = FakeClock()
    memory = KodMemory(rate_backoff_s=16, rate_backoff_max_s=1024, clock=clock)
    with FakeNtpServer("kod", kiss="RATE") as fake:
        probe([fake.address], FAST, memory)
        assert memory.rate_backoff_s(*fake.address) == 16
        clock.now += 15
        skipped = probe([fake.address], FAST, memory)
        assert fake.requests == 1
        clock.now += 2
        asked = probe([fake.address], FAST, memory)
        assert fake.requests == 2
    assert skipped.tried[0].outcome == "kod-rate"
    assert (skipped.tried[0].detail or "").startswith("skipped: RATE received, backing off 16 s")
    assert asked.tried[0].outcome == "kod-rate"
    assert asked.tried[0].requests == 1


def test_rate_back_off_doubles_and_is_capped() -> None:
    clock = FakeClock()
    memory = KodMemory(rate_backoff_s=16, rate_backoff_max_s=1024, clock=clock)
    seen = []
    with FakeNtpServer("kod", kiss="RATE") as fake:
        for _ in range(9):
            probe([fake.address], FAST, memory)
            backoff = memory.rate_backoff_s(*fake.address)
            assert backoff is not None
            seen.append(backoff)
            clock.now += backoff + 1
    assert seen == [16, 32, 64, 128, 256, 512, 1024, 1024, 1024]


def test_a_good_answer_after_rate_forgets_the_back_off() -> None:
    clock = FakeClock()
    memory = KodMemory(clock=clock)
    with FakeNtpServer("kod", kiss="RATE") as fake:
        probe([fake.address], FAST, memory)
        clock.now += 17
        fake.behaviour = "ok"
        assert probe([fake.address], FAST, memory).ok
        assert memory.rate_backoff_s(*fake.address) is None


def test_reset_clears_a_rate_back_off() -> None:
    memory = KodMemory()
    with FakeNtpServer("kod", kiss="RATE") as fake:
        probe([fake.address], FAST, memory)
        memory.reset()
        assert memory.rate_backoff_s(*fake.address) is None
        probe([fake.address], FAST, memory)
        assert fake.requests == 2


def test_other_kiss_codes_are_not_remembered() -> None:
    memory = KodMemory()
    with FakeNtpServer("kod", kiss="INIT") as fake:
        probe([fake.address], FAST, memory)
        result = probe([fake.address], FAST, memory)
        assert fake.requests == 2
    assert result.tried[0].outcome == "kod-other"


def test_without_a_memory_each_probe_asks_again() -> None:
    with FakeNtpServer("kod", kiss="DENY") as fake:
        probe([fake.address], FAST)
        probe([fake.address], FAST)
        assert fake.requests == 2


def test_a_kod_with_a_wrong_origin_is_not_believed() -> None:
    # An off-path forger can send "DENY" too; only an answer carrying our nonce counts.
    memory = KodMemory()
    with FakeNtpServer("kod", kiss="DENY", forge_origin=True) as fake:
        result = probe([fake.address], FAST, memory)
        assert result.tried[0].outcome == "bad-origin"
        probe([fake.address], FAST, memory)
        assert fake.requests == 2


def test_rate_after_a_good_sample_keeps_the_sample_and_backs_off() -> None:
    memory = KodMemory()
    with FakeNtpServer("kod", kiss="RATE", good_first=1) as fake:
        result = probe([fake.address], ProbeSettings(timeout_s=0.3, samples=4), memory)
        assert fake.requests == 2  # the RATE ended the burst
    assert result.ok
    assert result.tried[0].detail == "kiss code RATE received after a good sample"
    assert memory.rate_backoff_s(*fake.address) == 16


def test_deny_after_a_good_sample_voids_the_burst() -> None:
    memory = KodMemory()
    with FakeNtpServer("kod", kiss="DENY", good_first=1) as fake, FakeNtpServer("ok") as good:
        result = probe([fake.address, good.address], FAST, memory)
    assert [a.outcome for a in result.tried] == ["kod-deny", "ok"]
    assert result.chosen is result.tried[1]
