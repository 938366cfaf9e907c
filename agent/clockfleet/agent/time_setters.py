"""Other time setters on this host, found and reported; never removed (docs/hosts.md).

Hosts the fleet is rolled out to carry what it replaces: `ntpdate` in a crontab, `sntp -s` in
cron.d, `chronyd -q` or `hwclock` in a nightly script, sometimes a second time daemon. Each
steps or disciplines the clock behind the agent's back. `scan()` lists them; the report
carries them (`time_setters`), the collector counts them, an alert names the host, and the
operator removes them: the agent deletes nothing of an operator's, ever.

What it reads, under `root` ("/" on a host; a directory in tests, like --tz-root), as the
agent's user with its unit's sandbox (nothing there hides a file it could read otherwise):
- /etc/crontab and /etc/cron.d/* (system crontabs; world-readable on Debian);
- the scripts of /etc/cron.{hourly,daily,weekly,monthly}/ and /etc/network/if-up.d/ (the
  ntpdate package runs ntpdate-debian from there when an interface comes up);
- users' crontabs, /var/spool/cron/crontabs/*, only where it may: on Debian that directory
  is root:crontab 1730 and each crontab its user's, 0600, so the agent cannot read root's.
  It says so (`Scan.unread`, logged); the package grants nothing more (docs/hosts.md);
- services and timers enabled under /etc/systemd/system (a link in a *.wants directory),
  by the ExecStart lines of the service each runs;
- time daemons (chronyd, systemd-timesyncd, ntpd, openntpd) enabled, or running as systemd
  sees them (`systemctl show`, read-only, any user may ask; only under root "/"), but the
  one the agent's own backend hands its list to. The `observe` backend sets nothing, so no
  daemon competes with it; the `system` backend competes with every one.
Only file names cron and run-parts act on count (no dot: not `ntpdate.dpkg-old`).
"""

from __future__ import annotations

import logging
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from clockfleet.agent.clock_backends import run_command
from clockfleet.agent.setter_commands import cron_command, script_command, setters_in

log = logging.getLogger("clockfleet.agent")

MAX_FILE = 64 * 1024  # a crontab or a script; the rest of a longer one is not read
MAX_ENTRIES = 256  # per directory
MAX_FINDINGS = 32  # what a report carries (clockfleet.protocol.messages.MAX_TIME_SETTERS)
# run-parts' and cron.d's rule: ASCII letters, digits, underscores and hyphens only.
RUN_PARTS_NAME = re.compile(r"\A[-\w]+\Z", re.ASCII)
SCRIPT_DIRS: tuple[str, ...] = tuple(
    f"etc/cron.{p}" for p in ("hourly", "daily", "weekly", "monthly")
)
SCRIPT_DIRS += ("etc/network/if-up.d",)
UNIT_DIRS: tuple[str, ...] = ("etc/systemd/system", "run/systemd/system", "lib/systemd/system")
UNIT_DIRS += ("usr/lib/systemd/system",)
# Time daemons, by unit, and the one each backend hands its list to (not a competitor).
DAEMONS = {
    "chrony.service": "chronyd",
    "systemd-timesyncd.service": "systemd-timesyncd",
    "ntp.service": "ntpd",
    "ntpsec.service": "ntpd",
    "openntpd.service": "openntpd",
}
OWN_DAEMON = {"chrony": "chrony.service", "timesyncd": "systemd-timesyncd.service"}


@dataclass(frozen=True, order=True)
class Finding:
    kind: str  # "cron", "script", "timer", "service" or "daemon"
    source: str  # where: "/etc/cron.d/ntpdate:2", "ntpdate.timer", "ntp.service"
    program: str  # what sets the clock: "ntpdate", "hwclock", "ntpd", ...


@dataclass
class Scan:
    found: list[Finding] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)  # paths it was not allowed to read


# The units among these that systemd runs now (default: systemd_running).
RunningUnits = Callable[[Sequence[str]], "set[str]"]


def scan(root: Path, backend: str, running: Optional[RunningUnits] = None) -> Scan:
    """Every other time setter under `root` for an agent on `backend`, sorted; never raises."""
    s = Scan()
    try:
        _crontabs(root, s)
        for d in SCRIPT_DIRS:
            for path in _entries(root, d, s, executable=True):
                _lines(root, path, "script", script_command, s)
        _units(root, s)
        _daemons(root, backend, running or _default_running(root), s)
    except Exception:  # a scan must never cost a sync its report
        log.exception("time setters: scan under %s failed", root)
    s.found = sorted(set(s.found))[:MAX_FINDINGS]
    return s


def _crontabs(root: Path, s: Scan) -> None:
    def system(line: str) -> Optional[str]:
        return cron_command(line, system=True)

    def user(line: str) -> Optional[str]:
        return cron_command(line, system=False)

    _lines(root, root / "etc/crontab", "cron", system, s)
    for path in _entries(root, "etc/cron.d", s):
        _lines(root, path, "cron", system, s)
    for path in _entries(root, "var/spool/cron/crontabs", s, any_name=True):
        _lines(root, path, "cron", user, s)


def _entries(
    root: Path, rel: str, s: Scan, *, executable: bool = False, any_name: bool = False
) -> list[Path]:
    """The files in root/rel that cron or run-parts would act on."""
    d = root / rel
    try:
        names = sorted(p.name for p in d.iterdir())[:MAX_ENTRIES]
    except FileNotFoundError:
        return []
    except OSError:
        s.unread.append(_shown(root, d))
        return []
    out = []
    for name in names:
        path = d / name
        if not (any_name or RUN_PARTS_NAME.match(name)):
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) and (not executable or mode & 0o111):
            out.append(path)
    return out


def _lines(
    root: Path, path: Path, kind: str, command: Callable[[str], Optional[str]], s: Scan
) -> None:
    try:
        with path.open("rb") as f:
            text = f.read(MAX_FILE).decode("utf-8", "replace")
    except (FileNotFoundError, IsADirectoryError):
        return
    except OSError:
        s.unread.append(_shown(root, path))
        return
    for number, line in enumerate(text.splitlines(), 1):
        cmd = command(line)
        for program in setters_in(cmd) if cmd else []:
            s.found.append(Finding(kind, f"{_shown(root, path)}:{number}", program))


def _units(root: Path, s: Scan) -> None:
    """Enabled services and timers whose service runs a time setter."""
    for name in _enabled(root):
        unit = name
        if name.endswith(".timer"):
            target = _unit_keys(root, name, ("Unit",))
            unit = target[0] if target else name[: -len(".timer")] + ".service"
        elif not name.endswith(".service") or name in DAEMONS:
            continue
        for command in _unit_keys(root, unit, ("ExecStartPre", "ExecStart", "ExecStartPost")):
            for program in setters_in(command.lstrip("-@+!:")):
                s.found.append(Finding(name.rsplit(".", 1)[1], name, program))


def _enabled(root: Path) -> set[str]:
    """Units linked from a *.wants or *.requires directory under /etc/systemd/system."""
    base = root / "etc/systemd/system"
    names: set[str] = set()
    try:
        dirs = [d for d in base.iterdir() if d.name.endswith((".wants", ".requires"))]
        for d in dirs[:MAX_ENTRIES]:
            names.update(p.name for p in list(d.iterdir())[:MAX_ENTRIES])
    except OSError:
        pass
    return names


def _unit_keys(root: Path, unit: str, keys: Iterable[str]) -> list[str]:
    """The values of `keys` in the first unit file of that name (as systemd looks them up)."""
    wanted = tuple(f"{k}=" for k in keys)
    for d in UNIT_DIRS:
        path = root / d / unit
        try:
            with path.open("rb") as f:
                text = f.read(MAX_FILE).decode("utf-8", "replace")
        except OSError:
            continue
        lines = (line.strip() for line in text.splitlines())
        return [line.split("=", 1)[1].strip() for line in lines if line.startswith(wanted)]
    return []


def _daemons(root: Path, backend: str, running: RunningUnits, s: Scan) -> None:
    if backend == "observe":
        return
    others = [u for u in DAEMONS if u != OWN_DAEMON.get(backend)]
    active = running(others) | (_enabled(root) & set(others))
    s.found.extend(Finding("daemon", unit, DAEMONS[unit]) for unit in active)


def _default_running(root: Path) -> RunningUnits:
    if root != Path("/") or not Path("/run/systemd/system").is_dir():
        return lambda units: set()
    return systemd_running


def systemd_running(units: Sequence[str], timeout_s: float = 5.0) -> set[str]:
    """The units among these that systemd has active (or starting); nothing if it cannot say."""
    rc, out = run_command(
        ["systemctl", "show", "--property=Id,ActiveState", "--", *units], timeout_s
    )
    if rc != 0:
        log.debug("time setters: systemctl show: %s", out)
        return set()
    found: set[str] = set()
    for block in out.split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("ActiveState") in ("active", "activating", "reloading"):
            found.add(props.get("Id", ""))
    return found & set(units)


def _shown(root: Path, path: Path) -> str:
    """A path as the host names it (under `root`: as if root were /)."""
    return "/" + str(path.relative_to(root)) if root != Path("/") else str(path)
