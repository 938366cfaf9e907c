"""The status file a root helper writes after applying what a backend handed it.

The chrony and timesyncd backends run as the agent's own user; the package's root helper
(packaging/debian/backend-apply) applies their files and replaces its status file whole
(JSON: what it applied, a detail). The agent confirms from it, so a file that vanished,
grew without bound or holds garbage must read as "nothing yet", never raise.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from clockfleet.agent.files import write_atomic, write_if_changed

MAX_STATUS_BYTES = 1 << 20


def status_stamp(path: Path) -> tuple[int, int, int] | None:
    """Which status file this is (the helper replaces it whole): a new one differs."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def latest_detail(path: Path) -> str:
    """What the helper's status file says now, for a failure's detail."""
    return str(read_helper_status(path).get("detail") or "nothing")


def read_helper_status(path: Path) -> dict[str, Any]:
    """The helper's last status (JSON object), or {} when there is none or it is unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_STATUS_BYTES + 1)
        value = json.loads(raw) if len(raw) <= MAX_STATUS_BYTES else None
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class HandOver:
    """A file handed to the root helper: what its answer must name, and since when."""

    status_path: Path
    digest: str  # sha256 of the content handed over: the helper's status names it
    before: Optional[tuple[int, int, int]]  # the status file as it was before
    changed: bool  # the file's content changed
    applied: bool  # before the hand-over, the status already showed this content applied
    handed_over: bool  # the helper has work to do: only its next status answers

    def wait(
        self, timeout_s: float, answered: Callable[[dict[str, Any]], bool]
    ) -> tuple[dict[str, Any], bool]:
        """Poll the helper's status until `answered(status)`, at most timeout_s: the last
        status read and whether it answered. After a hand-over only a status newer than it
        counts (an older one may carry the same digest: a failed run of the same file)."""
        deadline = time.monotonic() + timeout_s
        while True:
            fresh = not self.handed_over or status_stamp(self.status_path) != self.before
            status = read_helper_status(self.status_path) if fresh else {}
            if answered(status):
                return status, True
            if time.monotonic() >= deadline:
                return status, False
            time.sleep(0.1)


def hand_over(path: Path, content: str, status_path: Path, more: bool = False) -> HandOver:
    """Write `content` to `path` for the helper (OSError escapes). Unchanged content that the
    helper's status does not show applied is written again (after a reboot /run is empty;
    or the helper failed, or missed a write): the write wakes its path unit. `more`: other
    work rides along (a step request), so it is handed over whatever the status says."""
    digest = hashlib.sha256(content.encode()).hexdigest()
    before = status_stamp(status_path)
    changed = write_if_changed(path, content)
    status = read_helper_status(status_path)
    applied = status.get("sha256") == digest and status.get("ok") is True
    handed_over = changed or more or not applied
    if handed_over and not changed:
        write_atomic(path, content.encode())
    return HandOver(status_path, digest, before, changed, applied, handed_over)
