"""Setting the time zone under a temporary root (never the machine's own /etc/localtime)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from clockfleet.agent.timezone import TimezoneError, current_timezone, set_timezone


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with Debian's starting point: /etc/localtime -> Etc/UTC."""
    (tmp_path / "etc").mkdir()
    os.symlink("/usr/share/zoneinfo/Etc/UTC", tmp_path / "etc/localtime")
    (tmp_path / "etc/timezone").write_text("Etc/UTC\n")
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {
        p.name: os.readlink(p) if p.is_symlink() else p.read_text()
        for p in sorted((root / "etc").iterdir())
    }


def test_sets_localtime_link_and_etc_timezone(root):
    detail = set_timezone("America/Chicago", root=root)

    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/America/Chicago"
    assert (root / "etc/timezone").read_text() == "America/Chicago\n"
    assert "America/Chicago" in detail


def test_current_timezone_reads_the_link_back(root):
    assert current_timezone(root) == "Etc/UTC"

    set_timezone("Europe/Dublin", root=root)

    assert current_timezone(root) == "Europe/Dublin"


def test_setting_the_same_zone_again_changes_nothing(root):
    set_timezone("Asia/Tokyo", root=root)
    link_stat = os.lstat(root / "etc/localtime")
    file_stat = os.stat(root / "etc/timezone")

    detail = set_timezone("Asia/Tokyo", root=root)

    assert detail == "already Asia/Tokyo"
    assert os.lstat(root / "etc/localtime").st_ino == link_stat.st_ino
    assert os.stat(root / "etc/timezone").st_mtime_ns == file_stat.st_mtime_ns


@pytest.mark.parametrize(
    "name", ["Mars/Olympus_Mons", "", "America/New York", "america/chicago", "UTC\n"]
)
def test_unknown_zone_is_refused_and_nothing_changes(root, name):
    before = snapshot(root)

    with pytest.raises(TimezoneError, match="time zone"):
        set_timezone(name, root=root)

    assert snapshot(root) == before


@pytest.mark.parametrize(
    "name", ["../../../etc/passwd", "/etc/passwd", "America/../../../etc/shadow", "."]
)
def test_path_like_name_is_refused_and_nothing_changes(root, name):
    before = snapshot(root)

    with pytest.raises(TimezoneError):
        set_timezone(name, root=root)

    assert snapshot(root) == before


def test_empty_root_gets_etc_created(tmp_path):
    set_timezone("Europe/Berlin", root=tmp_path)

    assert current_timezone(tmp_path) == "Europe/Berlin"


def test_localtime_as_a_copied_file_is_replaced_by_a_link(root):
    (root / "etc/localtime").unlink()
    shutil.copy("/usr/share/zoneinfo/Etc/UTC", root / "etc/localtime")

    set_timezone("Australia/Sydney", root=root)

    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/Australia/Sydney"


def test_only_a_stale_etc_timezone_is_rewritten(root):
    set_timezone("America/Chicago", root=root)
    (root / "etc/timezone").write_text("Etc/UTC\n")
    link_ino = os.lstat(root / "etc/localtime").st_ino

    detail = set_timezone("America/Chicago", root=root)

    assert detail == f"wrote {root / 'etc/timezone'}"
    assert os.lstat(root / "etc/localtime").st_ino == link_ino
    assert (root / "etc/timezone").read_text() == "America/Chicago\n"


def test_no_temporary_files_are_left_behind(root):
    set_timezone("Europe/Paris", root=root)

    assert sorted(p.name for p in (root / "etc").iterdir()) == ["localtime", "timezone"]


def test_zone_missing_from_the_roots_own_tzdata_is_refused(root):
    zoneinfo = root / "usr/share/zoneinfo/Etc"
    zoneinfo.mkdir(parents=True)
    (zoneinfo / "UTC").write_bytes(b"TZif")
    before = snapshot(root)

    with pytest.raises(TimezoneError, match="does not exist"):
        set_timezone("America/Chicago", root=root)

    assert snapshot(root) == before


def test_current_timezone_falls_back_to_etc_timezone(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/timezone").write_text("Europe/Dublin\n")

    assert current_timezone(tmp_path) == "Europe/Dublin"


def test_current_timezone_is_none_when_nothing_says(tmp_path):
    assert current_timezone(tmp_path) is None


def test_timedatectl_is_refused_for_another_root(root):
    with pytest.raises(TimezoneError, match="timedatectl"):
        set_timezone("America/Chicago", root=root, use_timedatectl=True)


def test_timedatectl_failure_is_a_timezone_error(tmp_path):
    # `false` stands in for timedatectl (no systemd here); the real / is only read.
    failing = [shutil.which("false") or "false"]
    zone = "Pacific/Chatham" if current_timezone() != "Pacific/Chatham" else "Pacific/Fiji"

    with pytest.raises(TimezoneError, match="timedatectl set-timezone"):
        set_timezone(zone, root=Path("/"), use_timedatectl=True, timedatectl=failing)


def test_without_systemd_the_link_is_used_even_when_asked_automatically(root):
    # use_timedatectl=None picks the link for any root other than "/" (tests never use "/").
    set_timezone("America/Denver", root=root, use_timedatectl=None)

    assert current_timezone(root) == "America/Denver"


def test_timedatectl_success_reports_the_command(tmp_path):
    # `true` stands in for timedatectl: it changes nothing, and the real / is only read.
    zone = "Pacific/Chatham" if current_timezone() != "Pacific/Chatham" else "Pacific/Fiji"

    detail = set_timezone(zone, use_timedatectl=True, timedatectl=[shutil.which("true") or "true"])

    assert detail == f"timedatectl set-timezone {zone}"
