"""The `timesyncd` backend: hand the list to systemd-timesyncd as a drop-in, then restart it.

Two ways, chosen by the options:

- by the root helper (the default; the package's way): the agent, as its own user with no
  capability and no D-Bus right, writes the drop-in into its own state directory,
  /var/lib/clockfleet/timesyncd; a systemd path unit runs the package's root helper
  (packaging/debian/backend-apply), which checks it, installs it in
  /etc/systemd/timesyncd.conf.d, restarts systemd-timesyncd and writes what it did to
  /run/clockfleet-agent/timesyncd.status, which the agent reads to confirm. A root agent
  would not do: root, even with no capability, may ask systemd over D-Bus for anything,
  a transient unit with every capability included (docs/trust.md, "On a host").
- by a command of its own (`restart_command:` given, or `helper_status: null`): the agent
  writes into `dropin_dir` and runs the command (`systemctl restart systemd-timesyncd`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clockfleet.agent.clock_backends import (
    Applied,
    Server,
    command_argv,
    dir_to_be_problem,
    fmt_server,
    list_problem,
    require_valid,
    run_command,
)
from clockfleet.agent.files import write_if_changed
from clockfleet.agent.helper_status import hand_over, latest_detail, read_helper_status

log = logging.getLogger(__name__)


NTP_PORT = 123
HELPER = "clockfleet-agent-timesyncd.service"
HELPER_DROPIN_DIR = Path("/var/lib/clockfleet/timesyncd")
HELPER_STATUS = Path("/run/clockfleet-agent/timesyncd.status")
TIMESYNCD_DROPIN_DIR = Path("/etc/systemd/timesyncd.conf.d")
RESTART_COMMAND = ("systemctl", "restart", "systemd-timesyncd")


def render_timesyncd_dropin(servers: Sequence[Server], chosen: Server) -> tuple[str, list[str]]:
    """The drop-in and the servers left out.

    timesyncd always queries port 123 (its resolver call hard-codes "123"; `NTP=` takes host
    names or addresses only), so servers on other ports are left out rather than pointing
    timesyncd at whatever answers on 123. timesyncd sticks with the first server that
    answers, so the chosen one comes first and the rest follow in operator order.
    Raises ValueError for a server the host grammar refuses.
    """
    require_valid(servers, chosen)
    ordered: list[Server] = [
        (chosen[0], chosen[1]),
        *[(h, p) for h, p in servers if (h, p) != (chosen[0], chosen[1])],
    ]
    hosts: list[str] = []
    skipped: list[str] = []
    for host, port in ordered:
        if port != NTP_PORT:
            skipped.append(fmt_server((host, port)))
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
    # None: HELPER_DROPIN_DIR by the helper, TIMESYNCD_DROPIN_DIR by a command of its own.
    dropin_dir: str | Path | None = None
    dropin_name: str = "clockfleet.conf"
    # None: RESTART_COMMAND when there is no helper.
    restart_command: str | Sequence[str] | None = None
    # Where the root helper says what it applied; None (or a restart_command): no helper.
    helper_status: str | Path | None = HELPER_STATUS
    command_timeout_s: float = 30.0
    confirm_timeout_s: float = 10.0  # the helper restarts timesyncd in about a second
    name: str = field(default="timesyncd", init=False)
    blocking: bool = field(default=True, init=False)  # apply() runs commands, writes files
    _restart_pending: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.dropin_dir is None:
            self.dropin_dir = HELPER_DROPIN_DIR if self.by_helper else TIMESYNCD_DROPIN_DIR
        self.dropin_dir = Path(self.dropin_dir)
        if self.helper_status is not None:
            self.helper_status = Path(self.helper_status)
        if self.restart_command is None and not self.by_helper:
            self.restart_command = RESTART_COMMAND
        if "/" in self.dropin_name or not self.dropin_name.endswith(".conf"):
            raise ValueError(f"dropin_name {self.dropin_name!r}: a plain name ending in .conf")

    @property
    def directory(self) -> Path:
        assert isinstance(self.dropin_dir, Path), "resolved by __post_init__"
        return self.dropin_dir

    @property
    def path(self) -> Path:
        return self.directory / self.dropin_name

    @property
    def by_helper(self) -> bool:
        """Whether the root helper, not this process, installs the drop-in and restarts."""
        return self.restart_command is None and self.helper_status is not None

    def check(self) -> str | None:
        if not self.by_helper:
            binary = command_argv(self.restart_command or RESTART_COMMAND)[0]
            if shutil.which(binary) is None:
                return f"timesyncd backend: {binary} not found"
        return dir_to_be_problem("timesyncd", self.directory)

    def apply(self, servers: Sequence[Server], chosen: Server, offset_s: float) -> Applied:
        problem = list_problem(servers, chosen)
        if problem is not None:
            return Applied("timesyncd", False, problem)
        if chosen[1] != NTP_PORT:
            return Applied(
                "timesyncd",
                False,
                f"timesyncd only queries port {NTP_PORT}; chosen server "
                f"{fmt_server(chosen)} cannot be handed to it",
            )
        content, skipped = render_timesyncd_dropin(servers, chosen)
        if self.by_helper:
            return self._apply_by_helper(content, skipped)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            changed = write_if_changed(self.path, content)
        except OSError as e:
            return Applied("timesyncd", False, f"cannot write {self.path}: {e.strerror or e}")
        done = [f"{'wrote' if changed else 'unchanged'} {self.path}"]
        if skipped:
            done.append(f"left out (timesyncd uses port {NTP_PORT} only): {', '.join(skipped)}")
        if changed or self._restart_pending:
            argv = command_argv(self.restart_command or RESTART_COMMAND)
            rc, out = run_command(argv, self.command_timeout_s)
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

    def _apply_by_helper(self, content: str, skipped: list[str]) -> Applied:
        """Hand the drop-in to the root helper; confirm by its status (the digest of what
        it installed, and whether the restart worked)."""
        status_path = Path(self.helper_status)  # type: ignore[arg-type]
        try:
            self.directory.mkdir(exist_ok=True)
            h = hand_over(self.path, content, status_path)
        except OSError as e:
            return Applied("timesyncd", False, f"cannot write {self.path}: {e.strerror or e}")
        done = [f"{'wrote' if h.changed else 'unchanged'} {self.path}"]
        if skipped:
            done.append(f"left out (timesyncd uses port {NTP_PORT} only): {', '.join(skipped)}")
        if not h.handed_over:
            status = read_helper_status(status_path)
            done.append(f"{HELPER}: {status.get('detail') or 'ok'}")
            return Applied("timesyncd", True, "; ".join(done))
        status, in_time = h.wait(self.confirm_timeout_s, lambda s: s.get("sha256") == h.digest)
        if not in_time:
            done.append(
                f"{HELPER} did not apply it within {self.confirm_timeout_s:g} s "
                f"({status_path}: {latest_detail(status_path)})"
            )
            return Applied("timesyncd", False, "; ".join(done))
        ok = status.get("ok") is True
        done.append(f"{HELPER}: {status.get('detail') or ('ok' if ok else 'failed')}")
        return Applied("timesyncd", ok, "; ".join(done))
