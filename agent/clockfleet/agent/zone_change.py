"""The time-zone half of a sync: set the zone the profile or list asks for, run the
operator's command when the zone actually changed, and read back what the host has.

What the report then says (report.py): `timezone_expected`, the zone asked for; `timezone`,
the zone the host has (read back from its /etc/localtime, not assumed); `tzdata_version` and
`utc_offset_s`, from the host's own zone file (host_zone.py); `zone_command`, the last
command's result. With no root to manage (`tz_root: null`) the agent leaves the zone alone
and reports the zone asked for, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from clockfleet.agent import timezone as tzmod
from clockfleet.agent.host_zone import HostZone, HostZoneError, read_host_zone
from clockfleet.agent.zone_command import log_result, run_zone_command
from clockfleet.protocol.messages import ZoneCommand

log = logging.getLogger("clockfleet.agent")


@dataclass(frozen=True)
class ZoneOutcome:
    timezone: Optional[str]  # the zone the host has (the one asked for when unmanaged)
    error: Optional[str] = None  # why the zone asked for is not set
    expected: Optional[str] = None  # the zone asked for (managed hosts only)
    host_zone: Optional[HostZone] = None  # the host's own rules, for its UTC offset
    command: Optional[ZoneCommand] = None  # run in this sync (the zone changed)


@dataclass(frozen=True)
class ZoneSettings:
    root: Optional[Path]  # None: leave the zone alone
    use_timedatectl: Optional[bool] = None
    command: Optional[Sequence[str]] = None  # argv run after a change
    command_timeout_s: float = 30.0


def apply_zone(agent_id: str, wanted: Optional[str], s: ZoneSettings) -> ZoneOutcome:
    if s.root is None:
        return ZoneOutcome(wanted)
    error = None
    changed = False
    if wanted is not None:
        try:
            done = tzmod.set_timezone(wanted, s.root, s.use_timedatectl)
            changed = not done.startswith("already")
            if changed:
                log.info("%s: time zone %s: %s", agent_id, wanted, done)
        except tzmod.TimezoneError as exc:
            error = f"time zone {wanted} not set: {exc}"
            log.warning("%s: %s", agent_id, error)  # local admins read the journal
    has = tzmod.current_timezone(s.root)
    if has is None and changed:
        has = wanted
    command = None
    if changed and s.command and wanted is not None:
        command = run_zone_command(s.command, s.command_timeout_s, wanted)
        log_result(agent_id, s.command, command)
    return ZoneOutcome(has, error, wanted, _host_zone(agent_id, s.root, has), command)


def _host_zone(agent_id: str, root: Path, name: Optional[str]) -> Optional[HostZone]:
    try:
        return read_host_zone(root, name or "localtime")
    except HostZoneError as exc:
        log.debug("%s: %s", agent_id, exc)
        return None
