"""The agent service running on this host, found through its state directory.

One service per state directory: it holds an exclusive lock on STATE_DIR/service.lock (with
its pid in the file) for as long as it runs. `clockfleet agent --once` on the same state
directory must not log in beside it: the broker binds client ids to identities, so a second
login of the agent's identity closes the service's connection (its will says `offline`) and
the two knock each other off. It asks the service instead: SIGUSR1 makes the service sync
now, and `--once` prints the report the service writes to STATE_DIR/report.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import IO, Optional

log = logging.getLogger("clockfleet.agent")

LOCK_NAME = "service.lock"
REPORT_NAME = "report.json"


class ServiceLockHeld(RuntimeError):
    """Another agent service already runs on this state directory."""


def hold(state_dir: Path) -> IO[str]:
    """Take the state directory's service lock for this process's lifetime (keep the file
    object open); raises ServiceLockHeld naming the other service's pid, or OSError when
    the lock file cannot be opened at all (a service still runs without it).

    The pid is only what `--once` signals: a full disk that cannot take it costs `--once`
    its way to the service, never the service its start."""
    state_dir.mkdir(parents=True, exist_ok=True)
    f = open(state_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        pid = running_pid(state_dir)
        raise ServiceLockHeld(
            f"another agent service (pid {pid}) runs on state directory {state_dir}"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
    except OSError as exc:
        log.warning(
            "cannot write the pid to %s (%s): `--once` cannot reach this service", f.name, exc
        )
    return f


def running_pid(state_dir: Path) -> Optional[int]:
    """The pid of the service holding the state directory's lock, or None when none does."""
    try:
        f = open(state_dir / LOCK_NAME)  # noqa: SIM115 - closed below
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            text = f.read().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def _report_at(state_dir: Path) -> Optional[str]:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        at = json.loads((state_dir / REPORT_NAME).read_bytes()).get("at")
        return at if isinstance(at, str) else None
    return None


def ask_to_sync(state_dir: Path, pid: int, timeout_s: float) -> Optional[bytes]:
    """Signal the service to sync now and wait for the report it then writes; the report's
    bytes, or None when none came within timeout_s. PermissionError: not allowed to signal
    it (run as root or as the service's user)."""
    before = _report_at(state_dir)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        at = _report_at(state_dir)
        if at is not None and at != before:
            with contextlib.suppress(OSError):
                return (state_dir / REPORT_NAME).read_bytes()
        time.sleep(0.05)
    return None
