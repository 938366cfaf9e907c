"""The status file a root helper writes after applying what a backend handed it.

The chrony and timesyncd backends run as the agent's own user; the package's root helper
(packaging/debian/backend-apply) applies their files and replaces its status file whole
(JSON: what it applied, a detail). The agent confirms from it, so a file that vanished,
grew without bound or holds garbage must read as "nothing yet", never raise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
