"""The operator's command after a time-zone change (agent.yaml `zone_change_command`).

A process that is already running may keep the old zone: glibc's localtime() re-reads
/etc/localtime when it changed, but localtime_r(), which threaded daemons call, keeps the
zone it loaded until tzset() or a restart (docs/timezones.md has the measurement). So after
the agent changed the zone it runs the configured command, for example a PBX reload: an argv
list run directly, never through a shell, with no input, in a session of its own so that a
timeout ends it and everything it started; its result goes into every report until the next
change.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Optional

from clockfleet.protocol.messages import ZoneCommand, clip_text

log = logging.getLogger("clockfleet.agent")

OUTPUT_TAIL = 200  # characters of the command's output kept for the report


def _tail(data: Optional[bytes]) -> str:
    text = (data or b"").decode("utf-8", errors="replace").strip()
    return text[-OUTPUT_TAIL:]


def run_zone_command(argv: Sequence[str], timeout_s: float, zone: str) -> ZoneCommand:
    """Run `argv` once; never raises: a missing binary or a timeout is part of the result."""
    at = datetime.now(timezone.utc)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout ends all of it
        )
    except OSError as exc:
        return ZoneCommand(
            timezone=zone,
            at=at,
            timed_out=False,
            duration_s=time.monotonic() - start,
            error=clip_text(f"{argv[0]}: {exc.strerror or exc}"),
        )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        return ZoneCommand(
            timezone=zone,
            at=at,
            timed_out=True,
            duration_s=time.monotonic() - start,
            error=clip_text(f"did not finish in {timeout_s:g} s; {_tail(out)}".rstrip("; ")),
        )
    code = proc.returncode
    detail = _tail(out)
    return ZoneCommand(
        timezone=zone,
        at=at,
        timed_out=False,
        duration_s=time.monotonic() - start,
        exit_code=max(-255, min(255, code)),
        error=clip_text(f"exit code {code}: {detail}" if code != 0 else None),
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()


def log_result(agent_id: str, argv: Sequence[str], result: ZoneCommand) -> None:
    if result.error is None:
        log.info(
            "%s: zone change to %s: %s exited 0 in %.2f s",
            agent_id,
            result.timezone,
            argv[0],
            result.duration_s,
        )
    else:
        log.warning(
            "%s: zone change to %s: %s failed: %s", agent_id, result.timezone, argv[0], result.error
        )
