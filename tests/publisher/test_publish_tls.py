"""`clockfleet publish` to the production config's TLS listener (broker/mosquitto.conf)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.devstack.mosquitto import ShippedBroker, start_shipped
from clockfleet.publisher.cli import publish_main
from clockfleet.publisher.cli_common import EXIT_UNREACHABLE
from tests.publisher.kit import FLEET, retained


@pytest.fixture
def tls_broker(short_tmp: Path) -> Iterator[ShippedBroker]:
    b = start_shipped(short_tmp, ["acme-01"])
    yield b
    b.daemon.stop()


def args(b: ShippedBroker, config: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(config),
        "--broker",
        b.tls_url,
        "--username",
        "publisher",
        "--password-file",
        str(b.password_file("publisher")),
        "--no-preflight",  # FLEET names documentation servers that answer nobody
        *extra,
    ]


def test_publishes_over_tls_with_the_test_ca(tls_broker: ShippedBroker, tmp_path: Path, capsys):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    assert (
        publish_main(args(tls_broker, config, "--ca-file", str(tls_broker.certs / "ca.crt"))) == 0
    )
    assert "4 sent, 0 failed" in capsys.readouterr().out
    assert "clock/v1/regions/us-east/servers" in retained(tls_broker)


def test_tls_without_the_ca_exits_unreachable_with_one_line(
    tls_broker: ShippedBroker, tmp_path: Path, capsys
):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    assert publish_main(args(tls_broker, config)) == EXIT_UNREACHABLE
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "certificate verify failed" in err[0]
    assert retained(tls_broker) == {}
