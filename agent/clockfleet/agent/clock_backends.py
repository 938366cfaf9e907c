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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from clockfleet.agent.files import write_if_changed
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

    def check(self) -> str | None:
        """Why this backend cannot work on this host, or None. Called at start-up."""
        ...

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        """Discipline the clock. `servers`: the validated list in operator order;
        `chosen`: the server that passed the probe; `offset_s`: server minus local."""
        ...


def _fmt_server(server: Server) -> str:
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _list_problem(servers: Sequence[Server], chosen: Server) -> str | None:
    """Defensive re-check: these strings end up in daemon config files."""
    if not servers:
        return "empty server list"
    problem = _server_problem([*servers, chosen])
    if problem is not None:
        return problem
    if tuple(chosen) not in [tuple(s) for s in servers]:
        return f"chosen server {_fmt_server(chosen)} is not in the list"
    return None


def _server_problem(servers: Sequence[Server]) -> str | None:
    for host, port in servers:
        problem = host_problem(host)
        if problem is not None:
            return f"refusing server {host!r}: {problem}"
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            return f"refusing server {host!r}: bad port {port!r}"
    return None


def _require_valid(servers: Sequence[Server], chosen: Server) -> None:
    problem = _server_problem([*servers, chosen])
    if problem is not None:
        raise ValueError(problem)


def _command(value: str | Sequence[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def _run(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
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


def _writable_dir_problem(d: Path) -> str | None:
    if not d.is_dir():
        return f"{d} does not exist or is not a directory"
    if not os.access(d, os.W_OK | os.X_OK):
        return f"{d} is not writable by this process (uid {os.geteuid()})"
    return None


# --- observe ------------------------------------------------------------------------------


@dataclass
class ObserveBackend:
    name: str = field(default="observe", init=False)

    def check(self) -> str | None:
        return None

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        return Applied(
            "observe",
            True,
            f"measured only: offset {offset_s:+.6f} s against {_fmt_server(chosen)}, "
            "clock untouched",
        )


# --- chrony -------------------------------------------------------------------------------

# Extra words after `server HOST port P`: chrony option names and numbers only, since this is
# spliced into chronyd's configuration.
_CHRONY_OPTIONS_RE = re.compile(r"\A[a-z]+(?: [a-z]+| -?[0-9]+(?:\.[0-9]+)?)*\Z")


def render_chrony_sources(
    servers: Sequence[Server], chosen: Server, server_options: str = "iburst"
) -> str:
    """The sources file: one `server` line per entry in operator order, the chosen one
    marked `prefer` so chronyd keeps the server the agent validated while it is good.

    Raises ValueError for a server the host grammar refuses: a host is written into a
    daemon's config, and this is the last place before it is."""
    _require_valid(servers, chosen)
    lines = ["# Written by clockfleet-agent; replaced whenever its region's list changes."]
    for host, port in servers:
        words = ["server", host, "port", str(port)]
        if server_options:
            words.append(server_options)
        if (host, port) == tuple(chosen):
            words.append("prefer")
        lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def parse_chrony_sources_csv(text: str) -> list[tuple[str, str, str]]:
    """`chronyc -c -n sources` -> [(mode, state, address)], e.g. ('^', '*', '192.0.2.10')."""
    rows = []
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) >= 3 and fields[0] in ("^", "=", "#"):
            rows.append((fields[0], fields[1], fields[2]))
    return rows


def _addresses_of(host: str) -> set[str]:
    """Every address chronyd might list for `host` (it lists IPs when run with -n)."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return {host}
    return {info[4][0] for info in infos} | {host}


@dataclass
class ChronyBackend:
    """Feed chronyd through its `sourcedir` (chrony >= 4.0) and chronyc.

    A step: when |offset| exceeds `step_threshold_s`, the agent arms chronyd's step for its
    next clock update (`chronyc makestep THRESHOLD 1`) before reloading, so chronyd steps by
    its own measurement of the new sources. A bare `chronyc makestep` right after a reload
    would be a no-op: chronyd has no sample from the new sources yet. This replaces the
    `makestep` limit from chrony.conf with a one-shot one (Debian's `makestep 1 3` is used up
    after three updates anyway).
    """

    sourcedir: str | Path = "/etc/chrony/sources.d"
    chronyc: str | Sequence[str] = "chronyc"
    socket: str | Path | None = None
    step_threshold_s: float = DEFAULT_STEP_THRESHOLD_S
    sources_file: str = "clockfleet.sources"
    server_options: str = "iburst"
    confirm_timeout_s: float = 5.0
    command_timeout_s: float = 10.0
    name: str = field(default="chrony", init=False)

    def __post_init__(self) -> None:
        self.sourcedir = Path(self.sourcedir)
        if "/" in self.sources_file or not self.sources_file.endswith(".sources"):
            raise ValueError(
                f"sources_file {self.sources_file!r}: a plain name ending in .sources "
                "(chronyd reads only *.sources from its sourcedir)"
            )
        if self.server_options and not _CHRONY_OPTIONS_RE.match(self.server_options):
            raise ValueError(f"server_options {self.server_options!r}: chrony option words only")
        if not self.step_threshold_s > 0:
            raise ValueError("step_threshold_s must be > 0")

    @property
    def path(self) -> Path:
        return Path(self.sourcedir) / self.sources_file

    def _chronyc(self, *args: str) -> tuple[int, str]:
        argv = _command(self.chronyc)
        if self.socket is not None:
            argv += ["-h", str(self.socket)]
        return _run([*argv, *args], self.command_timeout_s)

    def check(self) -> str | None:
        binary = _command(self.chronyc)[0]
        if shutil.which(binary) is None:
            return f"chrony backend: {binary} not found (install chrony)"
        problem = _writable_dir_problem(Path(self.sourcedir))
        if problem is not None:
            return (
                f"chrony backend: sourcedir {problem}; chrony.conf needs "
                f"`sourcedir {self.sourcedir}`"
            )
        return None

    def _refused(self, rc: int, out: str) -> str | None:
        """chronyc exits 0 on some failures; its reply code is the truth."""
        if rc != 0:
            if "connection to daemon" in out or "Cannot talk to daemon" in out:
                where = self.socket or "its default socket"
                return f"{out} (is chronyd running? tried {where})"
            return out or f"exit code {rc}"
        if out and not out.startswith("200 OK") and re.match(r"\A5\d\d ", out):
            return out
        return None

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        problem = _list_problem(servers, chosen)
        if problem is not None:
            return Applied("chrony", False, problem)
        content = render_chrony_sources(servers, chosen, self.server_options)
        try:
            changed = write_if_changed(self.path, content)
        except OSError as e:
            return Applied("chrony", False, f"cannot write {self.path}: {e.strerror or e}")
        done = [f"{'wrote' if changed else 'unchanged'} {self.path} ({len(servers)} servers)"]

        # A failed arm still lets the new list in (chronyd then slews), but is a failure.
        step_failed: str | None = None
        if abs(offset_s) > self.step_threshold_s:
            rc, out = self._chronyc("makestep", f"{self.step_threshold_s:g}", "1")
            step_failed = self._refused(rc, out)
            if step_failed is None:
                done.append(
                    f"step armed (|offset| {abs(offset_s):.3f} s > {self.step_threshold_s:g} s)"
                )
            else:
                done.append(f"makestep: {step_failed}")

        rc, out = self._chronyc("reload", "sources")
        refused = self._refused(rc, out)
        if refused is not None:
            return Applied("chrony", False, "; ".join([*done, f"reload sources: {refused}"]))
        done.append("reloaded")

        wanted = _addresses_of(chosen[0])
        deadline = time.monotonic() + self.confirm_timeout_s
        listed: list[tuple[str, str, str]] = []
        while True:
            rc, out = self._chronyc("-c", "-n", "sources")
            refused = self._refused(rc, out)
            if refused is not None:
                return Applied("chrony", False, "; ".join([*done, f"sources: {refused}"]))
            listed = parse_chrony_sources_csv(out)
            if any(addr in wanted for _, _, addr in listed):
                break
            if time.monotonic() >= deadline:
                shown = ", ".join(a for _, _, a in listed) or "nothing"
                return Applied(
                    "chrony",
                    False,
                    "; ".join(
                        [
                            *done,
                            f"chronyd does not list {chosen[0]} after "
                            f"{self.confirm_timeout_s:g} s (lists {shown})",
                        ]
                    ),
                )
            time.sleep(0.1)
        done.append(f"chronyd lists {_fmt_server(chosen)} (prefer)")
        return Applied("chrony", step_failed is None, "; ".join(done))


# --- timesyncd ----------------------------------------------------------------------------

NTP_PORT = 123


def render_timesyncd_dropin(servers: Sequence[Server], chosen: Server) -> tuple[str, list[str]]:
    """The drop-in and the servers left out.

    timesyncd always queries port 123 (its resolver call hard-codes "123"; `NTP=` takes host
    names or addresses only), so servers on other ports are left out rather than pointing
    timesyncd at whatever answers on 123. timesyncd sticks with the first server that
    answers, so the chosen one comes first and the rest follow in operator order.
    Raises ValueError for a server the host grammar refuses.
    """
    _require_valid(servers, chosen)
    ordered = [tuple(chosen), *[tuple(s) for s in servers if tuple(s) != tuple(chosen)]]
    hosts: list[str] = []
    skipped: list[str] = []
    for host, port in ordered:
        if port != NTP_PORT:
            skipped.append(_fmt_server((host, port)))
        elif host not in hosts:
            hosts.append(host)
    text = (
        "# Written by clockfleet-agent; replaced whenever its region's list changes.\n"
        "[Time]\n"
        f"NTP={' '.join(hosts)}\n"
    )
    return text, skipped


@dataclass
class TimesyncdBackend:
    dropin_dir: str | Path = "/etc/systemd/timesyncd.conf.d"
    dropin_name: str = "clockfleet.conf"
    restart_command: str | Sequence[str] = ("systemctl", "restart", "systemd-timesyncd")
    command_timeout_s: float = 30.0
    name: str = field(default="timesyncd", init=False)
    _restart_pending: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.dropin_dir = Path(self.dropin_dir)
        if "/" in self.dropin_name or not self.dropin_name.endswith(".conf"):
            raise ValueError(f"dropin_name {self.dropin_name!r}: a plain name ending in .conf")

    @property
    def path(self) -> Path:
        return Path(self.dropin_dir) / self.dropin_name

    def check(self) -> str | None:
        binary = _command(self.restart_command)[0]
        if shutil.which(binary) is None:
            return f"timesyncd backend: {binary} not found"
        d = Path(self.dropin_dir)
        # A missing drop-in directory is created on first apply; its parent must allow it.
        problem = _writable_dir_problem(d if d.exists() else d.parent)
        return None if problem is None else f"timesyncd backend: {problem}"

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        problem = _list_problem(servers, chosen)
        if problem is not None:
            return Applied("timesyncd", False, problem)
        if chosen[1] != NTP_PORT:
            return Applied(
                "timesyncd",
                False,
                f"timesyncd only queries port {NTP_PORT}; chosen server "
                f"{_fmt_server(chosen)} cannot be handed to it",
            )
        content, skipped = render_timesyncd_dropin(servers, chosen)
        try:
            Path(self.dropin_dir).mkdir(parents=True, exist_ok=True)
            changed = write_if_changed(self.path, content)
        except OSError as e:
            return Applied("timesyncd", False, f"cannot write {self.path}: {e.strerror or e}")
        done = [f"{'wrote' if changed else 'unchanged'} {self.path}"]
        if skipped:
            done.append(f"left out (timesyncd uses port {NTP_PORT} only): {', '.join(skipped)}")
        if changed or self._restart_pending:
            rc, out = _run(_command(self.restart_command), self.command_timeout_s)
            if rc != 0:
                self._restart_pending = True
                return Applied(
                    "timesyncd",
                    False,
                    "; ".join([*done, f"restart failed (exit {rc}): {out or 'no output'}"]),
                )
            self._restart_pending = False
            done.append("restarted systemd-timesyncd")
        return Applied("timesyncd", True, "; ".join(done))


# --- system -------------------------------------------------------------------------------


def choose_adjustment(offset_s: float, step_threshold_s: float = DEFAULT_STEP_THRESHOLD_S) -> str:
    """'system-step' past the threshold, else 'system-slew' (the report's discipline)."""
    return "system-step" if abs(offset_s) > step_threshold_s else "system-slew"


def has_capability(status_text: str, bit: int = CAP_SYS_TIME) -> bool:
    """Whether the CapEff line of a /proc/PID/status text has capability `bit`."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


class ClockSyscalls(Protocol):
    """The only code that changes the kernel clock; injectable so tests never do."""

    def step(self, offset_s: float) -> None: ...
    def slew(self, offset_s: float) -> None: ...


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class KernelClock:
    """CLOCK_REALTIME via clock_settime (step) and adjtime(3) (slew at 500 ppm)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def step(self, offset_s: float) -> None:
        # Read and set in one go; the gap between the two calls is nanoseconds.
        now_ns = time.clock_gettime_ns(time.CLOCK_REALTIME)
        time.clock_settime_ns(time.CLOCK_REALTIME, now_ns + round(offset_s * 1e9))

    def slew(self, offset_s: float) -> None:
        # glibc normalises a negative tv_usec; it turns this into ADJ_OFFSET_SINGLESHOT.
        delta = _Timeval(0, round(offset_s * 1e6))
        if self._libc.adjtime(ctypes.byref(delta), None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))


@dataclass
class SystemBackend:
    step_threshold_s: float = DEFAULT_STEP_THRESHOLD_S
    syscalls: ClockSyscalls | None = None
    proc_status: str | Path = "/proc/self/status"
    name: str = field(default="system", init=False)

    def __post_init__(self) -> None:
        if not self.step_threshold_s > 0:
            raise ValueError("step_threshold_s must be > 0")

    def check(self) -> str | None:
        try:
            text = Path(self.proc_status).read_text()
        except OSError as e:
            return f"system backend: cannot read {self.proc_status}: {e.strerror or e}"
        if not has_capability(text, CAP_SYS_TIME):
            return (
                "system backend: this process lacks CAP_SYS_TIME and cannot set the clock "
                "(run as root or grant it: AmbientCapabilities=CAP_SYS_TIME in the unit)"
            )
        return None

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        how = choose_adjustment(offset_s, self.step_threshold_s)
        syscalls = self.syscalls if self.syscalls is not None else KernelClock()
        try:
            if how == "system-step":
                syscalls.step(offset_s)
            else:
                syscalls.slew(offset_s)
        except OSError as e:
            reason = e.strerror or str(e)
            if e.errno == errno.EPERM:
                reason += " (needs CAP_SYS_TIME)"
            return Applied(how, False, f"{how[7:]} by {offset_s:+.6f} s failed: {reason}")
        verb = "stepped" if how == "system-step" else "slewing"
        return Applied(how, True, f"{verb} clock by {offset_s:+.6f} s ({_fmt_server(chosen)})")


# --- factory ------------------------------------------------------------------------------

_FACTORIES: dict[str, Callable[..., ClockBackend]] = {
    "observe": ObserveBackend,
    "chrony": ChronyBackend,
    "timesyncd": TimesyncdBackend,
    "system": SystemBackend,
}


def make_backend(name: str, **options: object) -> ClockBackend:
    """A backend by name with its options (agent.yaml's `backend_options`).

    Raises ValueError naming the valid backends, or the option that is wrong.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"unknown clock backend {name!r} (valid: {', '.join(BACKEND_NAMES)})")
    try:
        return factory(**options)
    except TypeError as e:
        raise ValueError(f"clock backend {name!r}: {e}") from None
