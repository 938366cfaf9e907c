"""How `make demo` speaks: one time-stamped line on the terminal per step or event."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime


def say(message: str) -> None:
    # Never let a closed terminal (Ctrl-C in `script`, a closed ssh session) stop the
    # clean-up that follows: lost log lines are better than orphaned daemons.
    with contextlib.suppress(OSError):
        print(f"{datetime.now(UTC):%H:%M:%S} demo: {message}", flush=True)
