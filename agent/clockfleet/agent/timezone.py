"""Set and read the host's time zone, under a configurable root.

Where systemd runs the host (root "/" and /run/systemd/system exists) the zone is set with
`timedatectl set-timezone`, so timedated and every D-Bus listener learn of it. Elsewhere
(containers, chroots, tests) `ROOT/etc/localtime` becomes a symlink to
`/usr/share/zoneinfo/NAME` (an absolute target, as Debian's tzdata writes it) and
`ROOT/etc/timezone` holds the name. Tests only ever pass a temporary root.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

from clockfleet.agent.files import write_atomic
from clockfleet.protocol.ids import timezone_problem

ZONEINFO = "/usr/share/zoneinfo"
_ZONEINFO_MARKERS = ("/zoneinfo/posix/", "/zoneinfo/right/", "/zoneinfo/")


class TimezoneError(Exception):
    """A zone that cannot or must not be set; nothing was changed."""


def _systemd_runs() -> bool:
    return Path("/run/systemd/system").is_dir()


def _zone_from_link(target: str) -> str | None:
    for marker in _ZONEINFO_MARKERS:
        i = target.find(marker)
        if i >= 0:
            name = target[i + len(marker) :]
            return name if timezone_problem(name) is None else None
    return None


def current_timezone(root: Path = Path("/")) -> str | None:
    """The zone `ROOT/etc/localtime` points at, else `ROOT/etc/timezone`'s, else None."""
    root = Path(root)
    with contextlib.suppress(OSError):
        name = _zone_from_link(os.readlink(root / "etc/localtime"))
        if name is not None:
            return name
    with contextlib.suppress(OSError, UnicodeDecodeError):
        name = (root / "etc/timezone").read_text().strip()
        if timezone_problem(name) is None:
            return name
    return None


def _replace_symlink(link: Path, target: str) -> None:
    # A fresh name in the same directory, then rename(2): readers see the old or the new
    # link, never a missing /etc/localtime.
    tmp = link.parent / f".{link.name}.{os.getpid()}.{secrets.token_hex(4)}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def set_timezone(
    name: str,
    root: Path = Path("/"),
    use_timedatectl: bool | None = None,
    timedatectl: Sequence[str] = ("timedatectl",),
) -> str:
    """Make `name` the host's zone; returns what was done ("already NAME" when nothing).

    Raises TimezoneError for an unknown or path-like name (before touching anything) or
    when the change fails. `use_timedatectl` None: only where systemd runs and root is "/".
    """
    problem = timezone_problem(name)
    if problem is not None:
        raise TimezoneError(problem)
    root = Path(root)
    is_real_root = root.resolve() == Path("/")
    if use_timedatectl is None:
        use_timedatectl = is_real_root and _systemd_runs()
    if use_timedatectl and not is_real_root:
        raise TimezoneError(f"timedatectl sets the zone of / only, not of {root}")

    if use_timedatectl:
        if current_timezone(root) == name:
            return f"already {name}"
        argv = [*timedatectl, "set-timezone", name]
        try:
            r = subprocess.run(
                argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TimezoneError(f"timedatectl set-timezone {name} failed: {e}") from e
        if r.returncode != 0:
            out = (r.stdout + r.stderr).strip() or f"exit code {r.returncode}"
            raise TimezoneError(f"timedatectl set-timezone {name} failed: {out}")
        return f"timedatectl set-timezone {name}"

    zonefile = root / ZONEINFO.lstrip("/") / name
    if (root / ZONEINFO.lstrip("/")).is_dir() and not zonefile.is_file():
        raise TimezoneError(f"{zonefile} does not exist (tzdata not installed under {root}?)")
    etc = root / "etc"
    link = etc / "localtime"
    target = f"{ZONEINFO}/{name}"
    try:
        etc.mkdir(parents=True, exist_ok=True)
        done = []
        if not _link_is_canonical(root, name):
            _replace_symlink(link, target)
            done.append(f"set {link} -> {target}")
        if not _timezone_file_says(root, name):
            write_atomic(etc / "timezone", (name + "\n").encode())
            done.append(f"wrote {etc / 'timezone'}")
    except OSError as e:
        raise TimezoneError(f"cannot set time zone {name} under {root}: {e}") from e
    return "; ".join(done) or f"already {name}"


def _link_is_canonical(root: Path, name: str) -> bool:
    try:
        return os.readlink(root / "etc/localtime") == f"{ZONEINFO}/{name}"
    except OSError:
        return False


def _timezone_file_says(root: Path, name: str) -> bool:
    try:
        return (root / "etc/timezone").read_text().strip() == name
    except (OSError, UnicodeDecodeError):
        return False
