"""Kamailio on Debian 12 under real systemd keeps the zone it started with until it is
restarted: the measurement docs/timezones.md records (tests/hosts/daemon_zones.py; cron,
which takes two minutes, is measured by `python -m tests.hosts.daemon_zones --cron`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hosts import daemon_zones, hostkit

pytestmark = pytest.mark.slow


@pytest.fixture
def daemons_host(engine: None) -> Iterator[hostkit.SystemdHost]:
    host = hostkit.SystemdHost(daemon_zones.build_image(), "bookworm").start()
    try:
        yield host
    finally:
        host.stop()


def test_kamailio_keeps_the_old_zone_after_a_change_and_a_reload_and_follows_a_restart(
    daemons_host: hostkit.SystemdHost,
) -> None:
    run = daemon_zones.measure_kamailio(daemons_host)

    zones = {step: daemon_zones.zones_seen(seen) for step, seen in run.steps.items()}
    dublin = zones["started in Europe/Dublin"]
    assert dublin in ({"GMT +0000"}, {"IST +0100"}), run.transcript.lines  # winter, summer
    assert zones["zone changed, nothing else"] == dublin, run.transcript.lines
    assert run.reload_exit != 0  # the unit has no ExecReload
    assert zones["after systemctl reload"] == dublin
    assert zones["after systemctl restart"] == {"IST +0530"}, run.transcript.lines
