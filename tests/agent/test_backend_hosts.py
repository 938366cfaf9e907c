"""The last boundary before a daemon's config file: a host the grammar refuses (an IPv6 zone
id carrying a newline and a second config line) never reaches chrony's sources file or the
timesyncd drop-in, however it got this far."""

from __future__ import annotations

from pathlib import Path

import pytest

from clockfleet.agent.backend_chrony import ChronyBackend, render_chrony_sources
from clockfleet.agent.backend_timesyncd import TimesyncdBackend, render_timesyncd_dropin

SMUGGLED = "fe80::1%eth0\nserver evil.example.net iburst prefer"
GOOD = ("192.0.2.10", 123)


@pytest.mark.parametrize("render", [render_chrony_sources, render_timesyncd_dropin])
def test_rendering_a_config_refuses_a_smuggled_host(render):
    with pytest.raises(ValueError, match="refusing server"):
        render([GOOD, (SMUGGLED, 123)], GOOD)


def test_the_chrony_backend_writes_no_sources_file_for_a_smuggled_host(tmp_path: Path):
    backend = ChronyBackend(sourcedir=tmp_path, chronyc="/bin/false")
    applied = backend.apply([(SMUGGLED, 123), GOOD], GOOD, 0.0)
    assert not applied.ok and "refusing server" in applied.detail
    assert list(tmp_path.iterdir()) == []


def test_the_timesyncd_backend_writes_no_dropin_for_a_smuggled_host(tmp_path: Path):
    backend = TimesyncdBackend(dropin_dir=tmp_path, restart_command="/bin/false")
    applied = backend.apply([GOOD, (SMUGGLED, 123)], GOOD, 0.0)
    assert not applied.ok and "refusing server" in applied.detail
    assert list(tmp_path.iterdir()) == []
