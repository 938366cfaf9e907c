"""How the agent disciplines the OS clock once a server has passed the probe.

Four backends, chosen by configuration (`backend:` in agent.yaml, `--backend`):

- `observe`   measure and report only; the clock is never touched.
- `chrony`    hand the list to a running chronyd: a sources file in its `sourcedir`,
              `chronyc reload sources`, a one-shot step past the step threshold.
- `timesyncd` hand the list to systemd-timesyncd: a drop-in with `NTP=`, then a restart.
- `system`    step (clock_settime) or slew (adjtime) the kernel clock directly; needs
              CAP_SYS_TIME and must not run alongside chronyd/timesyncd.

`apply()` never raises for an operational failure (missing binary, chronyd down, refused
permission): it returns `Applied(ok=False, detail=...)` so the agent can report it and go on.

This module holds what they share; each backend lives in its own module (backend_chrony.py,
backend_timesyncd.py, backend_system.py) and backend_choice.py picks one by name.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from clockfleet.protocol.ids import host_problem

log = logging.getLogger(__name__)

Server = tuple[str, int]

# RFC 5905's STEPT, also ntpd's and timesyncd's step threshold: below it a correction is
# slewed (no time jumps for running call timers), above it stepped (slewing 1 s at chrony's
# default 83 ms/s would leave routing wrong for ~12 s, at adjtime's 0.5 ms/s for ~33 min).
DEFAULT_STEP_THRESHOLD_S = 0.128

BACKEND_NAMES: tuple[str, ...] = ("observe", "chrony", "timesyncd", "system")

# Bit 25 of the capability sets (linux/capability.h).
CAP_SYS_TIME = 25


@dataclass(frozen=True)
class Applied:
    """What a backend did with a passing server.

    `discipline` names the method attempted (one of protocol DISCIPLINES); `ok` says whether
    it worked (a report of a failed one says discipline "none": report.py).
    """

    discipline: str
    ok: bool
    detail: str | None = None


class ClockBackend(Protocol):
    name: str
    blocking: bool  # apply() may block (commands, files): the agent runs it on a worker

    def check(self) -> str | None:
        """Why this backend cannot work on this host, or None. Called at start-up."""
        ...

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        """Discipline the clock. `servers`: the validated list in operator order;
        `chosen`: the server that passed the probe; `offset_s`: server minus local."""
        ...


def fmt_server(server: Server) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def list_problem(servers: Sequence[Server], chosen: Server) -> str | None:
    """Defensive re-check: these strings end up in daemon config files."""
    if not servers:
        return "empty server list"
    problem = server_problem([*servers, chosen])
    if problem is not None:
        return problem
    if tuple(chosen) not in [tuple(s) for s in servers]:
        return f"chosen server {fmt_server(chosen)} is not in the list"
    return None


def server_problem(servers: Sequence[Server]) -> str | None:
    for host, port in servers:
        problem = host_problem(host)
        if problem is not None:
            return f"refusing server {host!r}: {problem}"
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            return f"refusing server {host!r}: bad port {port!r}"
    return None


def require_valid(servers: Sequence[Server], chosen: Server) -> None:
    problem = server_problem([*servers, chosen])
    if problem is not None:
        raise ValueError(problem)


def command_argv(value: str | Sequence[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def run_command(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """Run a command; (exit code, combined output). Never raises: a missing binary or a
    timeout comes back as exit code 127 / 124 with the reason as output."""
    try:
        r = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: command not found"
    except PermissionError as e:
        return 126, f"{argv[0]}: {e.strerror}"
    except subprocess.TimeoutExpired:
        return 124, f"{shlex.join(argv)} did not finish in {timeout_s:g} s"
    except OSError as e:
        return 126, f"{argv[0]}: {e}"
    out = (r.stdout + r.stderr).strip()
    return r.returncode, out


def writable_dir_problem(d: Path) -> str | None:
    if not d.is_dir():
        return f"{d} does not exist or is not a directory"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"{d} is not writable by this process (uid {os.geteuid()})"
    return None


def dir_to_be_problem(backend: str, d: Path) -> str | None:
    """A directory this backend writes into, made on first use when missing (the package's
    unit makes the helpers' with StateDirectory=): it, or else its parent, must allow it."""
    problem = writable_dir_problem(d if d.exists() else d.parent)
    return None if problem is None else f"{backend} backend: {problem}"


# --- observe ------------------------------------------------------------------------------


@dataclass
class ObserveBackend:
    name: str = field(default="observe", init=False)
    blocking: bool = field(default=False, init=False)  # apply() does no I/O: runs on the loop

    def check(self) -> str | None:
        return None

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        return Applied(
            "observe",
            True,
            f"measured only: offset {offset_s:+.6f} s against {fmt_server(chosen)}, "
            "clock untouched",
        )


# --- chrony -------------------------------------------------------------------------------


# Extra words after `server HOST port P`: chrony option names and numbers only, since this is
# spliced into chronyd's configuration.
