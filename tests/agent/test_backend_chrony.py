"""The chrony backend against a real chronyd client (-x) and real chronyd NTP servers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clockfleet.agent.backend_choice import make_backend
from clockfleet.agent.backend_chrony import (
    ChronyBackend,
    parse_chrony_sources_csv,
    render_chrony_sources,
)

# Fast polling so chronyd takes samples (and clock updates) within a second or two.
FAST = "iburst minpoll 0 maxpoll 1"

pytestmark = pytest.mark.timeout(90)


def backend_for(client, **options) -> ChronyBackend:
    options.setdefault("server_options", FAST)
    return ChronyBackend(sourcedir=client.sourcedir, socket=client.socket, **options)


def test_apply_makes_chronyd_list_the_chosen_server(chrony_client, chrony_server):
    server = chrony_server()
    chosen = (server.host, server.port)

    applied = backend_for(chrony_client).apply([chosen], chosen, 0.001)

    assert applied.ok, applied.detail
    assert applied.discipline == "chrony"
    assert server.host in chrony_client.sources()


def test_sources_file_keeps_operator_order_and_prefers_the_chosen_server(
    chrony_client, chrony_server
):
    first, second = chrony_server(), chrony_server()
    servers = [(first.host, first.port), (second.host, second.port)]

    applied = backend_for(chrony_client).apply(servers, servers[1], 0.0)

    assert applied.ok, applied.detail
    lines = [
        line
        for line in (chrony_client.sourcedir / "clockfleet.sources").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert lines == [
        f"server {first.host} port {first.port} {FAST}",
        f"server {second.host} port {second.port} {FAST} prefer",
    ]
    assert set(chrony_client.sources()) == {first.host, second.host}


def test_same_list_again_does_not_rewrite_the_sources_file(chrony_client, chrony_server):
    server = chrony_server()
    chosen = (server.host, server.port)
    backend = backend_for(chrony_client)
    assert backend.apply([chosen], chosen, 0.0).ok
    before = os.stat(backend.path)

    again = backend.apply([chosen], chosen, 0.0)

    after = os.stat(backend.path)
    assert again.ok, again.detail
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert again.detail is not None and again.detail.startswith("unchanged")


def test_changed_list_rewrites_the_file_and_chronyd_follows(chrony_client, chrony_server):
    old, new = chrony_server(), chrony_server()
    backend = backend_for(chrony_client)
    assert backend.apply([(old.host, old.port)], (old.host, old.port), 0.0).ok

    applied = backend.apply([(new.host, new.port)], (new.host, new.port), 0.0)

    assert applied.ok, applied.detail
    assert applied.detail is not None and applied.detail.startswith("wrote")
    assert f"server {new.host} port {new.port}" in backend.path.read_text()
    assert chrony_client.sources() == [new.host]


def test_offset_past_threshold_arms_a_step_that_chronyd_attempts(chrony_client, chrony_server):
    server = chrony_server(fake_offset_s=2.0)
    chosen = (server.host, server.port)

    applied = backend_for(chrony_client).apply([chosen], chosen, 2.0)

    assert applied.ok, applied.detail
    assert "step armed" in (applied.detail or "")
    # Under -x chronyd cannot step, and says so: proof that it tried.
    chrony_client.wait_for_log("Could not step system clock")


def test_offset_within_threshold_leaves_chronyd_slewing(chrony_client, chrony_server):
    server = chrony_server(fake_offset_s=2.0)
    chosen = (server.host, server.port)

    applied = backend_for(chrony_client).apply([chosen], chosen, 0.05)

    assert applied.ok, applied.detail
    assert "step" not in (applied.detail or "")
    # chronyd logs "wrong by" and attempts any step in the same clock update; it is
    # single-threaded, so once it has answered a later command that update is complete.
    chrony_client.wait_for_log("System clock wrong by")
    assert chrony_client.chronyc("tracking").returncode == 0
    assert "Could not step system clock" not in chrony_client.log.read_text()


def test_missing_chronyc_is_reported_not_raised(chrony_client, chrony_server, tmp_path):
    server = chrony_server()
    chosen = (server.host, server.port)
    backend = backend_for(chrony_client, chronyc=str(tmp_path / "no-such-chronyc"))

    applied = backend.apply([chosen], chosen, 0.0)

    assert not applied.ok
    assert applied.ok is False
    assert "command not found" in (applied.detail or "")
    assert backend.check() is not None and "not found" in backend.check()


def test_dead_chronyd_is_reported_not_raised(chrony_client, chrony_server):
    server = chrony_server()
    chosen = (server.host, server.port)
    chrony_client.daemon.stop()

    applied = backend_for(chrony_client).apply([chosen], chosen, 0.0)

    assert not applied.ok
    assert "reload sources" in (applied.detail or "")
    assert "is chronyd running?" in (applied.detail or "")


def test_unwritable_sourcedir_is_reported_not_raised(tmp_path):
    backend = ChronyBackend(sourcedir=tmp_path / "missing", socket=tmp_path / "c.sock")

    applied = backend.apply([("192.0.2.1", 123)], ("192.0.2.1", 123), 0.0)

    assert not applied.ok
    assert "cannot write" in (applied.detail or "")
    assert "does not exist" in (backend.check() or "")


@pytest.mark.parametrize(
    "host", ["ntp.example.net\nallow all", "a b", "$(reboot)", "ntp;rm", "", "x" * 300]
)
def test_host_that_could_inject_chrony_config_is_refused_and_nothing_written(tmp_path, host):
    backend = ChronyBackend(sourcedir=tmp_path, socket=tmp_path / "c.sock")

    applied = backend.apply([(host, 123)], (host, 123), 0.0)

    assert not applied.ok
    assert "refusing server" in (applied.detail or "")
    assert list(tmp_path.iterdir()) == []


def test_chosen_server_outside_the_list_is_refused(tmp_path):
    backend = ChronyBackend(sourcedir=tmp_path, socket=tmp_path / "c.sock")

    applied = backend.apply([("192.0.2.1", 123)], ("192.0.2.2", 123), 0.0)

    assert not applied.ok
    assert "not in the list" in (applied.detail or "")


def test_chronyd_not_listing_the_server_in_time_is_a_failure(chrony_client, tmp_path):
    # chronyd's sourcedir is elsewhere: it reloads fine but never sees our file.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    backend = ChronyBackend(sourcedir=elsewhere, socket=chrony_client.socket, confirm_timeout_s=0.5)

    applied = backend.apply([("192.0.2.1", 123)], ("192.0.2.1", 123), 0.0)

    assert not applied.ok
    assert "does not list 192.0.2.1" in (applied.detail or "")


def test_render_writes_ipv6_literals_bare_and_one_line_per_server():
    text = render_chrony_sources([("2001:db8::1", 123), ("ntp.example.net", 1123)], ("::1", 1))

    assert "server 2001:db8::1 port 123 iburst\n" in text
    assert "server ntp.example.net port 1123 iburst\n" in text


def test_parse_sources_csv_reads_mode_state_and_address():
    out = "^,*,127.0.0.9,8,0,17,0,-0.1,-0.1,0.0\n^,?,192.0.2.1,0,0,0,4294967295,0,0,0\n"

    assert parse_chrony_sources_csv(out) == [("^", "*", "127.0.0.9"), ("^", "?", "192.0.2.1")]


@pytest.mark.parametrize(
    "options",
    [{"server_options": "iburst\nallow all"}, {"sources_file": "../chrony.conf"}, {"bogus": 1}],
)
def test_bad_chrony_options_are_refused_at_construction(options):
    with pytest.raises(ValueError):
        make_backend("chrony", **options)


def test_check_passes_with_chronyc_and_a_writable_sourcedir(chrony_client):
    assert backend_for(chrony_client).check() is None


def test_sources_file_is_replaced_atomically_leaving_no_temp_files(chrony_client, chrony_server):
    server = chrony_server()
    chosen = (server.host, server.port)
    backend = backend_for(chrony_client)

    backend.apply([chosen], chosen, 0.0)

    assert [p.name for p in Path(chrony_client.sourcedir).iterdir()] == ["clockfleet.sources"]


def test_refused_step_still_hands_over_the_list_but_is_a_failure(
    chrony_client, chrony_server, tmp_path
):
    # A chronyc that refuses makestep the way chronyd does for an unprivileged client.
    wrapper = tmp_path / "chronyc"
    wrapper.write_text(
        '#!/bin/sh\ncase "$*" in *makestep*) echo "501 Not authorised"; exit 1;; esac\n'
        'exec chronyc "$@"\n'
    )
    wrapper.chmod(0o755)
    server = chrony_server()
    chosen = (server.host, server.port)

    applied = backend_for(chrony_client, chronyc=str(wrapper)).apply([chosen], chosen, 3.0)

    assert not applied.ok
    assert "makestep: 501 Not authorised" in (applied.detail or "")
    assert server.host in chrony_client.sources()
