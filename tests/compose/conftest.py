"""Fixtures of the compose tests: compose.yaml and compose.local.yaml as YAML, and as
Compose merges them (`docker compose config`, which reads files only; a skip without the
compose v2 plugin)."""

from __future__ import annotations

import pytest

from tests.compose.composekit import COMPOSE, LOCAL, compose_config, load


@pytest.fixture(scope="module")
def compose() -> dict:
    return load(COMPOSE)


@pytest.fixture(scope="module")
def local() -> dict:
    return load(LOCAL)


@pytest.fixture(scope="module")
def merged() -> dict:
    """compose.yaml alone, as Compose reads it (merge keys resolved, default ports)."""
    return compose_config("compose.yaml")


@pytest.fixture(scope="module")
def merged_local() -> dict:
    """compose.local.yaml over compose.yaml, as Compose merges them (default ports)."""
    return compose_config("compose.yaml", "compose.local.yaml")
