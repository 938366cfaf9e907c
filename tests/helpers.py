"""Helpers the tests share, imported as `from tests.helpers import ...` (conftest.py holds
fixtures only: pytest loads it by itself, and a test importing it would load it twice)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Each chronyd gets its own loopback address: chrony keys sources by IP, not port.
_addresses = (f"127.0.{n // 250}.{n % 250 + 2}" for n in itertools.count(8))


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
