"""Name resolution is bounded: a list of names whose resolver hangs costs one short deadline,
not a resolver timeout per name (64 x 5 s and more)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from clockfleet.agent.probe import ProbeSettings, probe, resolve_all
from tests.agent.fakentp import FakeNtpServer

SETTINGS = ProbeSettings(timeout_s=0.3, retry_timeout_s=0, resolve_timeout_s=0.5)


@pytest.fixture
def hanging_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """getaddrinfo hangs for names (as with a dead DNS server) until the test ends."""
    release = threading.Event()
    real = socket.getaddrinfo

    def slow(host: str, *args: object, **kwargs: object) -> object:
        if host.endswith(".example.test"):
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    yield release
    release.set()


def test_64_hanging_names_cost_one_resolution_deadline(hanging_resolver: threading.Event):
    names = [(f"ntp{i}.example.test", 123) for i in range(64)]
    started = time.monotonic()
    result = probe(names, SETTINGS)
    elapsed = time.monotonic() - started
    assert elapsed < 3 * SETTINGS.resolve_timeout_s
    assert {a.outcome for a in result.tried} == {"unresolvable"}
    assert "no answer within 0.5 s" in (result.tried[-1].detail or "")


def test_a_hanging_name_does_not_hold_up_the_ip_literal_after_it(
    hanging_resolver: threading.Event,
):
    with FakeNtpServer("ok") as good:
        result = probe([("ntp.example.test", 123), good.address], SETTINGS)
    assert [a.outcome for a in result.tried] == ["unresolvable", "ok"]


def test_ip_literals_are_answered_without_the_resolver_pool():
    resolved = resolve_all([("127.0.0.1", 123), ("::1", 123)], timeout_s=0.0)
    assert all(isinstance(v, list) and v for v in resolved.values())


def test_a_port_outside_the_range_is_unreachable_before_any_lookup():
    result = probe([("127.0.0.1", 70000)], SETTINGS)
    assert result.tried[0].outcome == "unreachable"
