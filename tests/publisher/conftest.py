from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol import signing
from clockfleet.publisher.cli import publish_main
from tests.publisher.kit import FLEET


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return signing.generate(tmp_path / "keys", "ops-2026")


@dataclass
class Run:
    rc: int
    out: str
    err: str


@pytest.fixture
def publish(
    broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture
) -> Callable[..., Run]:
    """publish(*extra_args, fleet=PATH, identity="publisher", preflight=False) -> Run, in
    process. The fleet files here name documentation servers (example.net, 192.0.2.0/24) that
    answer nobody, so the preflight is off unless a test asks for it."""

    def run(
        *extra: str, fleet: Path | None = None, identity: str = "publisher", preflight: bool = False
    ) -> Run:
        capsys.readouterr()
        args = [
            "--config",
            str(fleet or tmp_path / "fleet.yaml"),
            "--state-file",
            str(tmp_path / "state.json"),
            *broker.login(identity),
            *([] if preflight else ["--no-preflight"]),
            *extra,
        ]
        rc = publish_main(args)
        captured = capsys.readouterr()
        return Run(rc, captured.out, captured.err)

    return run


@pytest.fixture
def fleet(tmp_path: Path) -> Callable[[str], Path]:
    """fleet(yaml_text) -> the fleet file, written where `publish` looks by default."""

    def write(text: str = FLEET) -> Path:
        path = tmp_path / "fleet.yaml"
        path.write_text(text)
        return path

    return write
