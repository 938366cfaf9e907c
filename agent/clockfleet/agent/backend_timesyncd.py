"""The `timesyncd` backend: hand the list to systemd-timesyncd as a drop-in, then restart it."""

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
    fmt_server,
    list_problem,
    require_valid,
    run_command,
    writable_dir_problem,
)
from clockfleet.agent.files import write_if_changed

log = logging.getLogger(__name__)


NTP_PORT = 123


def render_timesyncd_dropin(servers: Sequence[Server], chosen: Server) -> tuple[str, list[str]]:
    """The drop-in and the servers left out.

    timesyncd always queries port 123 (its resolver call hard-codes "123"; `NTP=` takes host
    names or addresses only), so servers on other ports are left out rather than pointing
    timesyncd at whatever answers on 123. timesyncd sticks with the first server that
    answers, so the chosen one comes first and the rest follow in operator order.
    Raises ValueError for a server the host grammar refuses.
    """
    require_valid(servers, chosen)
    ordered = [tuple(chosen), *[tuple(s) for s in servers if tuple(s) != tuple(chosen)]]
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
    dropin_dir: str | Path = "/etc/systemd/timesyncd.conf.d"
    dropin_name: str = "clockfleet.conf"
    restart_command: str | Sequence[str] = ("systemctl", "restart", "systemd-timesyncd")
    command_timeout_s: float = 30.0
    name: str = field(default="timesyncd", init=False)
    blocking: bool = field(default=True, init=False)  # apply() runs commands, writes files
    _restart_pending: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.dropin_dir = Path(self.dropin_dir)
        if "/" in self.dropin_name or not self.dropin_name.endswith(".conf"):
            raise ValueError(f"dropin_name {self.dropin_name!r}: a plain name ending in .conf")

    @property
    def path(self) -> Path:
        return Path(self.dropin_dir) / self.dropin_name

    def check(self) -> str | None:
        binary = command_argv(self.restart_command)[0]
        if shutil.which(binary) is None:
            return f"timesyncd backend: {binary} not found"
        d = Path(self.dropin_dir)
        # A missing drop-in directory is created on first apply; its parent must allow it.
        problem = writable_dir_problem(d if d.exists() else d.parent)
        return None if problem is None else f"timesyncd backend: {problem}"

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
        try:
            Path(self.dropin_dir).mkdir(parents=True, exist_ok=True)
            changed = write_if_changed(self.path, content)
        except OSError as e:
            return Applied("timesyncd", False, f"cannot write {self.path}: {e.strerror or e}")
        done = [f"{'wrote' if changed else 'unchanged'} {self.path}"]
        if skipped:
            done.append(f"left out (timesyncd uses port {NTP_PORT} only): {', '.join(skipped)}")
        if changed or self._restart_pending:
            rc, out = run_command(command_argv(self.restart_command), self.command_timeout_s)
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
