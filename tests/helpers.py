"""Helpers the tests share, imported as `from tests.helpers import ...` (conftest.py holds
fixtures only: pytest loads it by itself, and a test importing it would load it twice)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Each chronyd gets its own loopback address: chrony keys sources by IP, not port. Two pytest
# runs at once (scripts/run-tests.sh) take blocks of their own: CLOCKFLEET_TEST_BLOCK=1 starts
# at 127.0.128.10, =2 at 127.1.6.10.
_FIRST = 8 + 32_000 * int(os.environ.get("CLOCKFLEET_TEST_BLOCK", "0"))
_addresses = (f"127.{n // 62_500}.{n // 250 % 250}.{n % 250 + 2}" for n in itertools.count(_FIRST))


def next_loopback_address() -> str:
    return next(_addresses)


def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 20.0, what: str = "", *, step_s: float = 0.01
) -> Any:
    """Poll until predicate() is truthy and return its value; fail the test naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step_s)
    value = predicate()
    assert value, f"timed out after {timeout_s} s waiting for {what or predicate}"
    return value
