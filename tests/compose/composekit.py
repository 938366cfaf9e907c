"""compose.yaml and compose.local.yaml as data, for the tests in this folder: the files as
YAML (Compose's `!reset`/`!override` tags included), the model `docker compose config` makes
of them, and the clockfleet command lines their services run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.compose.cli_check import clockfleet_lines
from tests.helpers import REPO

COMPOSE = REPO / "compose.yaml"
LOCAL = REPO / "compose.local.yaml"
CLOCKFLEET_IMAGE = "clockfleet:0.1.0"


class OverrideLoader(yaml.SafeLoader):
    """YAML with Compose's override tags: `!reset X` and `!override X` load as X."""


for _tag in ("!reset", "!override"):
    OverrideLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node) or None
        ),
    )


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=OverrideLoader)


def compose_config(*files: str, env: dict[str, str] | None = None) -> dict:
    """The model `docker compose config` makes of these files (every profile on), or a skip
    without the compose v2 plugin. It reads files only: no engine is asked."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI (the compose v2 plugin merges the files)")
    argv = ["docker", "compose", "--project-directory", str(REPO)]
    argv += [a for f in files for a in ("-f", str(REPO / f))]
    argv += ["--profile", "*", "config", "--format", "json"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLOCKFLEET_", "COMPOSE_"))}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )
    if done.returncode != 0 and "is not a docker command" in done.stderr:
        pytest.skip("no docker compose v2 plugin (tests/hosts/engine.sh installs it)")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def clockfleet_commands(compose: dict) -> list[tuple[str, list[str]]]:
    """(service, argv after `clockfleet`) for every clockfleet run in compose.yaml."""
    out = []
    for name, svc in services(compose).items():
        command = svc.get("command")
        if svc.get("image") == CLOCKFLEET_IMAGE and "entrypoint" not in svc:
            assert isinstance(command, list), f"{name}: command must be a list"
            out.append((name, [str(w) for w in command]))
        elif isinstance(command, list):  # a shell script run by another entrypoint
            for argv in clockfleet_lines("\n".join(str(w) for w in command)):
                out.append((name, argv))
    return out


def argv_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None
