"""MQTT 3.1.1 fallback, against a broker that refuses MQTT 5 (NATS 2.9's MQTT listener)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet import devstack
from clockfleet.publisher.cli import publish_main
from tests.publisher.kit import FLEET

pytestmark = pytest.mark.skipif(
    shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists(),
    reason="nats-server not installed (apt-get install nats-server)",
)


@pytest.fixture
def nats_mqtt(short_tmp: Path) -> Iterator[int]:
    port, mqtt_port = devstack.free_port(), devstack.free_port()
    conf = short_tmp / "nats.conf"
    conf.write_text(
        f"server_name: n1\nlisten: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{short_tmp}/js" }}\n'
        f"mqtt {{ listen: 127.0.0.1:{mqtt_port} }}\n"
    )
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    proc = subprocess.Popen([binary, "-c", str(conf), "-l", str(short_tmp / "nats.log")])
    try:
        deadline = time.monotonic() + 15
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "nats did not start"
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", mqtt_port), timeout=0.2),
            ):
                break
            time.sleep(0.02)
        yield mqtt_port
    finally:
        proc.terminate()
        proc.wait(10)


def test_falls_back_to_mqtt_311_when_the_broker_refuses_mqtt_5(
    nats_mqtt: int, tmp_path: Path, capsys
):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    args = ["--config", str(config), "--no-preflight", "--broker", f"mqtt://127.0.0.1:{nats_mqtt}"]
    assert publish_main(args) == 0
    first = capsys.readouterr()
    assert "4 sent, 0 failed, 0 unchanged (MQTT 3.1.1)" in first.out
    assert "refused MQTT 5" in first.err
    # The retained state reads back over 3.1.1 too: the second run has nothing to do.
    assert publish_main(args) == 0
    assert "nothing changed" in capsys.readouterr().out


def test_a_cluster_refusing_mqtt_5_is_asked_in_mqtt_5_on_one_node_only(
    nats_mqtt: int, tmp_path: Path, capsys
):
    # three names for one node stand in for a cluster's nodes: all refuse MQTT 5 alike
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    nodes = ",".join(f"mqtt://127.0.0.1:{nats_mqtt}" for _ in range(3))
    assert publish_main(["--config", str(config), "--no-preflight", "--broker", nodes]) == 0
    refused = capsys.readouterr().err.split("refused MQTT 5", 1)[1].splitlines()[0]
    assert refused.count("Unsupported protocol version") == 1
