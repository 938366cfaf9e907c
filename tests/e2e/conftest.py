"""Fixtures for the end-to-end tests: a real Prometheus (one per module)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.collector.kit import Prometheus, prometheus_factory


@pytest.fixture(scope="module")
def prometheus() -> Iterator[Callable[[str], Prometheus]]:
    with prometheus_factory() as start:
        yield start
