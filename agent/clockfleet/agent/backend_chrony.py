"""The `chrony` backend: hand the list to a running chronyd through its sourcedir and chronyc.

Two ways, chosen by the options:

- by the root helper (the default; the package's way): the agent, as its own user with no
  capability, writes the sources file (and a step request) into its own state directory,
  /var/lib/clockfleet/chrony; a systemd path unit runs the package's root helper
  (packaging/debian/backend-apply), which checks every line, installs it as chronyd's only
  source, runs chronyc's privileged commands and writes what it did to
  /run/clockfleet-agent/chrony.status, which the agent reads to confirm. So the agent needs
  neither chronyd's user nor its command socket (docs/hosts.md, "Backends and privileges").
- by chronyc itself (`socket:` given, or `helper_status: null`): the agent writes into
  chronyd's sourcedir and runs `chronyc reload sources` / `makestep` over the socket; for a
  chronyd of its own (tests, a private -x client) or a root agent.
"""

from __future__ import annotations

import logging
import re
import secrets
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clockfleet.agent.clock_backends import (
    DEFAULT_STEP_THRESHOLD_S,
    Applied,
    Server,
    command_argv,
    dir_to_be_problem,
    fmt_server,
    list_problem,
    require_valid,
    run_command,
    writable_dir_problem,
)
from clockfleet.agent.files import write_atomic, write_if_changed
from clockfleet.agent.helper_status import hand_over, latest_detail

log = logging.getLogger(__name__)

NTS_KE_PORT = 4460  # chronyd's default `ntsport`

HELPER = "clockfleet-agent-chrony.service"
HELPER_SOURCEDIR = Path("/var/lib/clockfleet/chrony")
HELPER_STATUS = Path("/run/clockfleet-agent/chrony.status")
CHRONY_SOURCEDIR = Path("/etc/chrony/sources.d")  # Debian's, for chronyc's own way
STEP_REQUEST = "makestep"  # beside the sources file: "THRESHOLD NONCE\n"


_CHRONY_OPTIONS_RE = re.compile(r"\A[a-z]+(?: [a-z]+| -?[0-9]+(?:\.[0-9]+)?)*\Z")


def render_chrony_sources(
    servers: Sequence[Server],
    chosen: Server,
    server_options: str = "iburst",
    nts: Mapping[Server, int] | None = None,
) -> str:
    """The sources file: one `server` line per entry in operator order, the chosen one
    marked `prefer` so chronyd keeps the server the agent validated while it is good. An
    NTS server (`nts`: its NTS-KE port) gets `nts` (and `ntsport` when not 4460): chronyd
    then does NTS-KE and authenticates every answer itself (docs/nts.md).

    Raises ValueError for a server the host grammar refuses: a host is written into a
    daemon's config, and this is the last place before it is."""
    require_valid(servers, chosen)
    lines = ["# Written by clockfleet-agent; replaced whenever its region's list changes."]
    for host, port in servers:
        words = ["server", host, "port", str(port)]
        if server_options:
            words.append(server_options)
        ke_port = (nts or {}).get((host, port))
        if ke_port is not None:
            words += ["nts"] if ke_port == NTS_KE_PORT else ["nts", "ntsport", str(ke_port)]
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
    return {str(info[4][0]) for info in infos} | {host}


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

    # None: HELPER_SOURCEDIR by the helper, CHRONY_SOURCEDIR by chronyc itself.
    sourcedir: str | Path | None = None
    chronyc: str | Sequence[str] = "chronyc"
    socket: str | Path | None = None
    # Where the root helper says what it applied; None (or a `socket`): chronyc's own way.
    helper_status: str | Path | None = HELPER_STATUS
    step_threshold_s: float = DEFAULT_STEP_THRESHOLD_S
    sources_file: str = "clockfleet.sources"
    server_options: str = "iburst"
    confirm_timeout_s: float = 5.0
    command_timeout_s: float = 10.0
    name: str = field(default="chrony", init=False)
    blocking: bool = field(default=True, init=False)  # apply() runs commands, writes files
    # The list's NTS servers and their NTS-KE ports, set by the sync before apply().
    nts_sources: dict[Server, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.sourcedir is None:
            self.sourcedir = HELPER_SOURCEDIR if self.by_helper else CHRONY_SOURCEDIR
        self.sourcedir = Path(self.sourcedir)
        if self.helper_status is not None:
            self.helper_status = Path(self.helper_status)
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
    def directory(self) -> Path:
        assert isinstance(self.sourcedir, Path), "resolved by __post_init__"
        return self.sourcedir

    @property
    def path(self) -> Path:
        return self.directory / self.sources_file

    @property
    def by_helper(self) -> bool:
        """Whether the root helper, not this process, runs chronyc's privileged commands."""
        return self.socket is None and self.helper_status is not None

    def _chronyc(self, *args: str) -> tuple[int, str]:
        argv = command_argv(self.chronyc)
        if self.socket is not None:
            argv += ["-h", str(self.socket)]
        return run_command([*argv, *args], self.command_timeout_s)

    def check(self) -> str | None:
        if self.by_helper:
            return dir_to_be_problem("chrony", self.directory)
        binary = command_argv(self.chronyc)[0]
        if shutil.which(binary) is None:
            return f"chrony backend: {binary} not found (install chrony)"
        problem = writable_dir_problem(self.directory)
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
        problem = list_problem(servers, chosen)
        if problem is not None:
            return Applied("chrony", False, problem)
        content = render_chrony_sources(servers, chosen, self.server_options, self.nts_sources)
        if self.by_helper:
            return self._apply_by_helper(servers, chosen, offset_s, content)
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
        done.append(f"chronyd lists {fmt_server(chosen)} (prefer)")
        return Applied("chrony", step_failed is None, "; ".join(done))

    def _apply_by_helper(
        self, servers: Sequence[Server], chosen: Server, offset_s: float, content: str
    ) -> Applied:
        """Hand the sources file (and a step request) to the root helper; confirm by its
        status: the digest of what it applied, and chronyd listing the chosen server."""
        status_path = Path(self.helper_status)  # type: ignore[arg-type]
        request: str | None = None
        try:
            self.directory.mkdir(exist_ok=True)
            if abs(offset_s) > self.step_threshold_s:
                # A nonce: the helper arms each request once, and its status names the one.
                request = f"{self.step_threshold_s:g} {secrets.token_hex(8)}\n"
                write_atomic(self.directory / STEP_REQUEST, request.encode())
            h = hand_over(self.path, content, status_path, more=request is not None)
        except OSError as e:
            return Applied("chrony", False, f"cannot write {self.path}: {e.strerror or e}")
        done = [f"{'wrote' if h.changed else 'unchanged'} {self.path} ({len(servers)} servers)"]
        wanted = _addresses_of(chosen[0])

        def ours(status: dict[str, Any]) -> bool:
            return status.get("sha256") == h.digest and (
                request is None or status.get("step") == request
            )

        def listed(status: dict[str, Any]) -> list[tuple[str, str, str]]:
            return parse_chrony_sources_csv(str(status.get("sources") or ""))

        def answered(status: dict[str, Any]) -> bool:
            return ours(status) and (
                status.get("ok") is not True or any(a in wanted for _, _, a in listed(status))
            )

        status, in_time = h.wait(self.confirm_timeout_s, answered)
        if in_time and status.get("ok") is not True:
            detail = status.get("detail") or "failed"
            return Applied("chrony", False, "; ".join([*done, f"{HELPER}: {detail}"]))
        if not in_time:
            if ours(status):
                shown = ", ".join(a for _, _, a in listed(status)) or "nothing"
                why = (
                    f"chronyd does not list {chosen[0]} after "
                    f"{self.confirm_timeout_s:g} s (lists {shown})"
                )
            else:
                why = (
                    f"{HELPER} did not apply it within {self.confirm_timeout_s:g} s "
                    f"({status_path}: {latest_detail(status_path)})"
                )
            return Applied("chrony", False, "; ".join([*done, why]))
        done.append(f"{HELPER}: {status.get('detail')}")
        done.append(f"chronyd lists {fmt_server(chosen)} (prefer)")
        return Applied("chrony", True, "; ".join(done))


# --- timesyncd ----------------------------------------------------------------------------
