"""The timesyncd backend: the drop-in it writes and the restart command it runs.

systemd does not run here, so the restart is a real command the test provides (a script that
records its calls, `true`, `false`) rather than `systemctl restart systemd-timesyncd`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clockfleet.agent.backend_choice import make_backend
from clockfleet.agent.backend_timesyncd import TimesyncdBackend

LIST = [("ntp1.example.net", 123), ("192.0.2.10", 123), ("192.0.2.11", 123)]


def recording_command(tmp_path: Path, exit_code: int = 0) -> tuple[str, Path]:
    calls = tmp_path / "calls"
    script = tmp_path / f"restart-{exit_code}.sh"
    script.write_text(
        f"#!/bin/sh\necho restarted >> {calls}\necho 'unit failed' >&2\nexit {exit_code}\n"
    )
    script.chmod(0o755)
    return str(script), calls


def test_writes_ntp_line_with_chosen_server_first_then_operator_order(tmp_path):
    restart, _ = recording_command(tmp_path)
    backend = TimesyncdBackend(dropin_dir=tmp_path / "conf.d", restart_command=restart)

    applied = backend.apply(LIST, ("192.0.2.10", 123), 0.01)

    assert applied.ok, applied.detail
    assert applied.discipline == "timesyncd"
    text = (tmp_path / "conf.d" / "clockfleet.conf").read_text()
    assert "[Time]\nNTP=192.0.2.10 ntp1.example.net 192.0.2.11\n" in text


def test_restarts_timesyncd_when_the_file_changes(tmp_path):
    restart, calls = recording_command(tmp_path)
    backend = TimesyncdBackend(dropin_dir=tmp_path, restart_command=restart)

    applied = backend.apply(LIST, LIST[0], 0.0)

    assert applied.ok
    assert calls.read_text() == "restarted\n"
    assert "restarted systemd-timesyncd" in (applied.detail or "")


def test_same_list_again_neither_rewrites_nor_restarts(tmp_path):
    restart, calls = recording_command(tmp_path)
    backend = TimesyncdBackend(dropin_dir=tmp_path / "d", restart_command=restart)
    backend.apply(LIST, LIST[0], 0.0)
    mtime = backend.path.stat().st_mtime_ns

    applied = backend.apply(LIST, LIST[0], 0.0)

    assert applied.ok
    assert backend.path.stat().st_mtime_ns == mtime
    assert calls.read_text() == "restarted\n"


def test_failed_restart_is_reported_and_retried_on_the_next_apply(tmp_path):
    failing, _ = recording_command(tmp_path, exit_code=3)
    backend = TimesyncdBackend(dropin_dir=tmp_path / "d", restart_command=failing)

    first = backend.apply(LIST, LIST[0], 0.0)

    assert not first.ok
    assert first.ok is False
    assert "restart failed (exit 3): unit failed" in (first.detail or "")

    working, calls = recording_command(tmp_path)
    backend.restart_command = working
    second = backend.apply(LIST, LIST[0], 0.0)  # file unchanged, restart still owed
    assert second.ok, second.detail
    assert calls.read_text().count("restarted") == 2  # once failing, once working


def test_real_false_command_is_a_failure_not_an_exception(tmp_path):
    backend = TimesyncdBackend(dropin_dir=tmp_path, restart_command=[shutil.which("false")])

    applied = backend.apply(LIST, LIST[0], 0.0)

    assert not applied.ok
    assert "restart failed (exit 1)" in (applied.detail or "")


def test_missing_restart_command_is_a_failure_not_an_exception(tmp_path):
    backend = TimesyncdBackend(dropin_dir=tmp_path, restart_command=str(tmp_path / "nope"))

    applied = backend.apply(LIST, LIST[0], 0.0)

    assert not applied.ok
    assert "command not found" in (applied.detail or "")
    assert "not found" in (backend.check() or "")


def test_servers_on_other_ports_are_left_out_and_said_so(tmp_path):
    backend = TimesyncdBackend(dropin_dir=tmp_path, restart_command=shutil.which("true"))

    applied = backend.apply([("192.0.2.10", 123), ("192.0.2.20", 1123)], ("192.0.2.10", 123), 0)

    assert applied.ok
    assert "NTP=192.0.2.10\n" in backend.path.read_text()
    assert "left out (timesyncd uses port 123 only): 192.0.2.20:1123" in (applied.detail or "")


def test_chosen_server_on_another_port_cannot_be_handed_to_timesyncd(tmp_path):
    backend = TimesyncdBackend(dropin_dir=tmp_path, restart_command=shutil.which("true"))

    applied = backend.apply([("192.0.2.20", 1123)], ("192.0.2.20", 1123), 0.0)

    assert not applied.ok
    assert "only queries port 123" in (applied.detail or "")
    assert not backend.path.exists()


def test_injecting_host_is_refused_and_nothing_written(tmp_path):
    backend = TimesyncdBackend(dropin_dir=tmp_path, restart_command=shutil.which("true"))

    applied = backend.apply([("ntp\nFallbackNTP=evil", 123)], ("ntp\nFallbackNTP=evil", 123), 0)

    assert not applied.ok
    assert list(tmp_path.iterdir()) == []


def test_check_passes_when_the_dropin_dir_can_be_created(tmp_path):
    backend = make_backend(
        "timesyncd", dropin_dir=tmp_path / "timesyncd.conf.d", restart_command="true"
    )

    assert backend.check() is None
