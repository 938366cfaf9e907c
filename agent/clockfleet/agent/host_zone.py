"""The host's own zone rules, as its programs read them: /etc/localtime under a root.

A host with the right zone name can still route calls an hour off when its tzdata is older
than a rule change (Mexico dropped DST in 2022). So the agent reports the UTC offset that the
host's own zone file gives now, and its tzdata version, and the collector compares that offset
with its own, current, rules (docs/timezones.md).

Under a root other than "/" (`--tz-root ROOT`) every path is read inside ROOT, as that host
would: /etc/localtime's link target `/usr/share/zoneinfo/NAME` is ROOT/usr/share/zoneinfo/NAME,
never this machine's file of the same name.
"""

from __future__ import annotations

import io
import os
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Optional

from clockfleet.agent.timezone import ZONEINFO

MAX_LINKS = 8
MAX_ZONE_FILE = 1 << 20  # a TZif file is a few KB


class HostZoneError(Exception):
    """The host's zone file could not be read or parsed."""


@dataclass(frozen=True)
class HostZone:
    rules: zoneinfo.ZoneInfo  # from the host's own /etc/localtime
    tzdata_version: Optional[str]

    def utc_offset_s(self, at: datetime) -> int:
        offset = at.astimezone(timezone.utc).astimezone(self.rules).utcoffset()
        return int(offset.total_seconds()) if offset is not None else 0


def _inside(root: Path, path: PurePosixPath) -> Path:
    return root.joinpath(*path.parts[1:]) if path.is_absolute() else root / path


def resolve_in_root(root: Path, path: str) -> Path:
    """`path` with every symbolic link followed inside `root`, as a chroot would."""
    current = PurePosixPath(path)
    for _ in range(MAX_LINKS):
        real = _inside(root, current)
        if not real.is_symlink():
            return real
        target = PurePosixPath(os.readlink(real))
        current = target if target.is_absolute() else current.parent / target
    raise HostZoneError(f"{path}: more than {MAX_LINKS} symbolic links under {root}")


def tzdata_version(root: Path) -> Optional[str]:
    """The tz database's version under `root`: the first line of tzdata.zi ("# version
    2025b"), which Debian's tzdata ships, or a +VERSION file (some distributions)."""
    base = _inside(root, PurePosixPath(ZONEINFO))
    try:
        with open(base / "tzdata.zi", encoding="ascii", errors="replace") as f:
            first = f.readline(200).split()
        if len(first) == 3 and first[:2] == ["#", "version"]:
            return first[2][:32]
    except OSError:
        pass
    try:
        return (base / "+VERSION").read_text(encoding="ascii", errors="replace").strip()[:32]
    except OSError:
        return None


def read_host_zone(root: Path, name: str) -> HostZone:
    """The rules in the host's /etc/localtime (under `root`), keyed `name`. Raises
    HostZoneError."""
    try:
        path = resolve_in_root(Path(root), "/etc/localtime")
        with open(path, "rb") as f:
            data = f.read(MAX_ZONE_FILE + 1)
    except OSError as exc:
        raise HostZoneError(f"cannot read the host's /etc/localtime: {exc}") from None
    if len(data) > MAX_ZONE_FILE or not data.startswith(b"TZif"):
        raise HostZoneError(f"{path} is not a TZif zone file")
    try:
        rules = zoneinfo.ZoneInfo.from_file(io.BytesIO(data), key=name)
    except (ValueError, OSError) as exc:
        raise HostZoneError(f"{path}: {exc}") from None
    return HostZone(rules, tzdata_version(Path(root)))
