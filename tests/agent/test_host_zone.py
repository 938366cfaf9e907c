"""The host's own zone rules, read inside a root as that host would read them."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from clockfleet.agent.host_zone import HostZoneError, read_host_zone, tzdata_version

WINTER = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
SUMMER = datetime(2026, 7, 7, 12, 0, tzinfo=timezone.utc)


def host_root(tmp: Path, name: str, rules_of: str, version: str = "2019c") -> Path:
    """A root whose /etc/localtime names `name` and whose zone file of that name holds the
    rules of `rules_of` (another zone's, to stand for stale or wrong tzdata)."""
    zoneinfo = tmp / "usr/share/zoneinfo"
    (zoneinfo / name).parent.mkdir(parents=True)
    shutil.copyfile(f"/usr/share/zoneinfo/{rules_of}", zoneinfo / name)
    (zoneinfo / "tzdata.zi").write_text(f"# version {version}\n# more\n")
    (tmp / "etc").mkdir()
    os.symlink(f"/usr/share/zoneinfo/{name}", tmp / "etc/localtime")
    return tmp


def test_a_dublin_zone_file_with_kolkatas_rules_gives_kolkatas_offset(tmp_path):
    root = host_root(tmp_path, "Europe/Dublin", "Asia/Kolkata")

    zone = read_host_zone(root, "Europe/Dublin")

    assert zone.utc_offset_s(WINTER) == 19800  # the host's rules, not this machine's (0)
    assert zone.utc_offset_s(SUMMER) == 19800
    assert zone.tzdata_version == "2019c"


def test_the_right_rules_give_dublins_own_offsets(tmp_path):
    root = host_root(tmp_path, "Europe/Dublin", "Europe/Dublin", "2025b")

    zone = read_host_zone(root, "Europe/Dublin")

    assert (zone.utc_offset_s(WINTER), zone.utc_offset_s(SUMMER)) == (0, 3600)


def test_a_relative_link_is_followed_inside_the_root(tmp_path):
    root = host_root(tmp_path, "Asia/Tokyo", "Asia/Kolkata")
    os.unlink(root / "etc/localtime")
    os.symlink("../usr/share/zoneinfo/Asia/Tokyo", root / "etc/localtime")

    assert read_host_zone(root, "Asia/Tokyo").utc_offset_s(WINTER) == 19800


def test_a_root_without_a_zone_file_is_an_error(tmp_path):
    (tmp_path / "etc").mkdir()
    os.symlink("/usr/share/zoneinfo/Europe/Dublin", tmp_path / "etc/localtime")

    with pytest.raises(HostZoneError):
        read_host_zone(tmp_path, "Europe/Dublin")
    assert tzdata_version(tmp_path) is None


def test_a_file_that_is_not_tzif_is_an_error(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/localtime").write_text("Europe/Dublin\n")

    with pytest.raises(HostZoneError, match="TZif"):
        read_host_zone(tmp_path, "Europe/Dublin")
