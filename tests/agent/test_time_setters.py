"""Other time setters on a host (agent/clockfleet/agent/time_setters.py): found in crontabs,
cron and interface scripts, enabled timers and services, second time daemons; under a
temporary root, as --tz-root does for the zone; never removed. The same under real systemd:
tests/hosts/test_apt_repository.py."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from clockfleet.agent.backend_choice import make_backend
from clockfleet.agent.report import build_report
from clockfleet.agent.setter_commands import setters_in
from clockfleet.agent.sync import finish_sync
from clockfleet.agent.time_setters import Finding, scan
from clockfleet.agent.zone_change import ZoneSettings
from clockfleet.protocol import codec
from clockfleet.protocol.messages import Report
from tests.agent.test_service_report import WALL, job, probed

NOTHING_RUNS = staticmethod(lambda units: set())


def write(root: Path, rel: str, text: str, mode: int = 0o644) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def link(root: Path, wants: str, unit: str) -> None:
    d = root / "etc/systemd/system" / wants
    d.mkdir(parents=True, exist_ok=True)
    (d / unit).symlink_to(f"/lib/systemd/system/{unit}")


def found(root: Path, backend: str = "chrony", running=lambda units: set()) -> set[tuple]:
    return {(f.kind, f.source, f.program) for f in scan(root, backend, running).found}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/usr/sbin/ntpdate -s pool.ntp.org >/dev/null 2>&1", ["ntpdate"]),
        ("test -x /usr/sbin/ntpdate && /usr/sbin/ntpdate-debian -s", ["ntpdate"]),
        ('sh -c "sntp -S pool.ntp.org; hwclock --systohc"', ["sntp", "hwclock"]),
        ("chronyd -q 'server 192.0.2.1 iburst'", ["chronyd -q"]),
        ("timeout 30 nice -n 10 ntpd -gq", ["ntpd -q"]),
        ("hwclock -s", ["hwclock"]),
        ("date -s '2026-12-01 10:00'", ["date -s"]),
        ("if true; then rdate time.example.net; fi", ["rdate"]),
    ],
)
def test_a_command_that_sets_the_clock_is_named(line: str, expected: list[str]):
    assert setters_in(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "ntpdate -q pool.ntp.org",  # query only
        "sntp pool.ntp.org",  # prints the offset
        "chronyd -Q 'server 192.0.2.1'",
        "hwclock -r",
        "date +%s",
        "rdate -p time.example.net",
        "echo ntpdate",
        "test -x /usr/sbin/ntpdate || exit 0",
        "chronyc tracking",
    ],
)
def test_a_command_that_only_reads_the_time_is_not_a_time_setter(line: str):
    assert setters_in(line) == []


def test_an_ntpdate_line_in_cron_d_is_found_with_its_file_and_line(tmp_path: Path):
    write(tmp_path, "etc/cron.d/ntpdate", "# keep the clock\n*/10 * * * * root ntpdate -s pool\n")

    assert found(tmp_path) == {("cron", "/etc/cron.d/ntpdate:2", "ntpdate")}


def test_crontab_scripts_and_interface_hooks_are_all_read(tmp_path: Path):
    write(tmp_path, "etc/crontab", "SHELL=/bin/sh\n17 * * * * root cd / && run-parts x\n")
    write(tmp_path, "etc/crontab", "@reboot root /sbin/hwclock --hctosys\n")
    write(tmp_path, "var/spool/cron/crontabs/root", "0 3 * * * /usr/sbin/ntpdate-debian\n", 0o600)
    write(tmp_path, "etc/cron.daily/sync-time", "#!/bin/sh\nchronyd -q 'pool x'\n", 0o755)
    write(tmp_path, "etc/network/if-up.d/ntpdate", "#!/bin/sh\nntpdate-debian -s\n", 0o755)

    assert found(tmp_path) == {
        ("cron", "/etc/crontab:1", "hwclock"),
        ("cron", "/var/spool/cron/crontabs/root:1", "ntpdate"),
        ("script", "/etc/cron.daily/sync-time:2", "chronyd -q"),
        ("script", "/etc/network/if-up.d/ntpdate:2", "ntpdate"),
    }


def test_files_cron_and_run_parts_ignore_are_not_reported(tmp_path: Path):
    write(tmp_path, "etc/cron.d/ntpdate.dpkg-old", "* * * * * root ntpdate pool\n")
    write(tmp_path, "etc/cron.d/commented", "# * * * * * root ntpdate pool\n")
    write(tmp_path, "etc/cron.daily/not-executable", "ntpdate pool\n", 0o644)

    assert found(tmp_path) == set()


def test_an_enabled_timer_whose_service_runs_ntpdate_is_found(tmp_path: Path):
    write(tmp_path, "lib/systemd/system/settime.timer", "[Timer]\nOnCalendar=hourly\n")
    write(
        tmp_path,
        "lib/systemd/system/settime.service",
        "[Service]\nExecStart=-/usr/sbin/ntpdate x\n",
    )
    write(
        tmp_path, "lib/systemd/system/boot-sync.service", "[Service]\nExecStart=/sbin/hwclock -s\n"
    )
    link(tmp_path, "timers.target.wants", "settime.timer")
    link(tmp_path, "multi-user.target.wants", "boot-sync.service")

    assert found(tmp_path) == {
        ("timer", "settime.timer", "ntpdate"),
        ("service", "boot-sync.service", "hwclock"),
    }


def test_a_second_time_daemon_is_found_but_not_the_one_the_backend_uses(tmp_path: Path):
    link(tmp_path, "multi-user.target.wants", "chrony.service")
    link(tmp_path, "multi-user.target.wants", "ntp.service")

    def timesyncd_runs(units):
        return {"systemd-timesyncd.service"} & set(units)

    assert found(tmp_path, "chrony", timesyncd_runs) == {
        ("daemon", "ntp.service", "ntpd"),
        ("daemon", "systemd-timesyncd.service", "systemd-timesyncd"),
    }
    assert ("daemon", "chrony.service", "chronyd") in found(tmp_path, "timesyncd")
    assert len(found(tmp_path, "system")) == 2  # it fights with every daemon
    assert found(tmp_path, "observe", timesyncd_runs) == set()  # it sets nothing


def test_a_broken_root_costs_nothing_but_what_cannot_be_read(tmp_path: Path):
    (tmp_path / "etc/crontab").mkdir(parents=True)  # a directory, not a file
    write(tmp_path, "etc/cron.d/binary", "\x00\xff\xfe* * * * * root ntpdate\n")
    (tmp_path / "etc/cron.d/dangling").symlink_to("/nonexistent")

    result = scan(tmp_path, "chrony", lambda units: set())

    assert result.found == [Finding("cron", "/etc/cron.d/binary:1", "ntpdate")]


def scan_as_nobody(root: Path) -> str:
    """scan(root) in a child of this process that dropped to nobody:nogroup with no
    supplementary groups. A fork, not a new interpreter: the checkout may sit where nobody
    cannot reach it (a clone under /root, 0700), and time_setters is loaded already."""
    user, group = pwd.getpwnam("nobody"), grp.getgrnam("nogroup")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(reader)
            os.setgroups([])
            os.setgid(group.gr_gid)
            os.setuid(user.pw_uid)
            s = scan(root, "chrony", lambda units: set())
            os.write(writer, f"{s.found} {s.unread}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(writer)
    with os.fdopen(reader) as f:
        out = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to nobody")
def test_a_crontab_the_agent_may_not_read_is_named_as_unread(tmp_path: Path):
    root = tmp_path / "host"
    write(root, "etc/crontab", "# nothing\n")
    write(root, "var/spool/cron/crontabs/root", "* * * * * ntpdate pool\n", 0o600)
    (root / "var/spool/cron/crontabs").chmod(0o1730)  # Debian's: root:crontab, others nothing
    opened = {d: d.stat().st_mode for d in (tmp_path, *tmp_path.parents) if str(d) > "/tmp/"}

    try:
        for d, mode in opened.items():  # the way there open to all, as / is
            d.chmod(mode | 0o005)
        out = scan_as_nobody(root)
    finally:
        for d, mode in opened.items():
            d.chmod(mode)

    assert out == "[] ['/var/spool/cron/crontabs']"


def report_after_sync(**looked: Path) -> Report:
    """The report of one observe sync; `time_setters_root=` makes it look for setters there."""
    outcome = finish_sync(
        "a1",
        job(None),
        probed(),
        (WALL, 0.0),
        backend=make_backend("observe"),
        zone_settings=ZoneSettings(None, None, None, 30.0),
        settle_s=0,
        **looked,
    )
    return build_report("a1", job(None), outcome, WALL, "0.1.0")


def test_the_report_carries_what_the_sync_found_and_readers_accept_it(tmp_path: Path):
    write(tmp_path, "etc/cron.d/ntpdate", "*/10 * * * * root ntpdate -s pool\n")

    report = report_after_sync(time_setters_root=tmp_path)
    decoded, _ = codec.decode(Report, codec.encode(report), topic_id="a1", check_future=False)

    assert decoded.time_setters is not None
    assert [(t.kind, t.program, t.source) for t in decoded.time_setters] == [
        ("cron", "ntpdate", "/etc/cron.d/ntpdate:1")
    ]


def test_a_report_of_an_agent_that_did_not_look_has_no_time_setters_field():
    report = report_after_sync()

    assert report.time_setters is None
    assert b"time_setters" not in codec.encode(report)
