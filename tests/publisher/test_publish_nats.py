"""MQTT 3.1.1 fallback, against brokers that refuse MQTT 5: the NATS 2.9 cluster as shipped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.devstack.nats import NatsCluster, start_cluster
from clockfleet.publisher.cli import publish_main
from tests.publisher.kit import FLEET

pytestmark = pytest.mark.skipif(
    shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists(),
    reason="nats-server not installed (apt-get install nats-server)",
)


@pytest.fixture
def cluster(short_tmp: Path) -> Iterator[NatsCluster]:
    """The 3-node cluster as shipped (broker/nats/): the publisher logs in as `publisher`."""
    c = start_cluster(short_tmp / "nats")
    yield c
    c.stop()


def as_publisher(cluster: NatsCluster, broker: str) -> list[str]:
    return [
        "--broker", broker, "--username", "publisher",
        "--password-file", str(cluster.password_file("publisher")),
    ]  # fmt: skip


def test_falls_back_to_mqtt_311_when_the_broker_refuses_mqtt_5(
    cluster: NatsCluster, tmp_path: Path, capsys
):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    args = ["--config", str(config), "--no-preflight", *as_publisher(cluster, cluster.nodes[0].url)]
    assert publish_main(args) == 0
    first = capsys.readouterr()
    assert "4 sent, 0 failed, 0 unchanged (MQTT 3.1.1)" in first.out
    assert "refused MQTT 5" in first.err
    # The retained state reads back over 3.1.1 too: the second run has nothing to do.
    assert publish_main(args) == 0
    assert "nothing changed" in capsys.readouterr().out


def test_a_cluster_refusing_mqtt_5_is_asked_in_mqtt_5_on_one_node_only(
    cluster: NatsCluster, tmp_path: Path, capsys
):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    assert (
        publish_main(
            ["--config", str(config), "--no-preflight", *as_publisher(cluster, cluster.urls)]
        )
        == 0
    )
    refused = capsys.readouterr().err.split("refused MQTT 5", 1)[1].splitlines()[0]
    assert refused.count("Unsupported protocol version") == 1
