"""One node of the loopback NATS cluster (nats.py): its ports and directory, its config rendered
from the production template `broker/nats/node.conf.template`, the child process, and the
readiness probe (an MQTT CONNECT and a QoS 1 SUBSCRIBE, as measured necessary on 2.9.10: right
after a start a node can time out a CONNECT or refuse a SUBSCRIBE for a few seconds).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.devstack.daemons import LOOPBACK, Daemon, DaemonError, render, require

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = REPO / "broker" / "nats" / "node.conf.template"
CLUSTER_NAME = "clockfleet"
PROBE_TOPIC = "clock/v1/devstack/probe"

# Values for the template's sizing placeholders on a test machine.
TEST_SIZING = {
    "MAX_CONNECTIONS": 65536,
    "MAX_MEMORY_STORE": "256MB",
    "MAX_FILE_STORE": "1GB",
}


@dataclass
class NatsNode:
    index: int
    name: str
    mqtt_port: int
    http_port: int
    cluster_port: int
    client_port: int
    dir: Path
    conf: Path
    daemon: Daemon | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.mqtt_port}"

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def monitor(self, path: str, timeout: float = 2.0) -> dict:
        """A monitoring endpoint's JSON (/healthz, /connz, /jsz, /routez)."""
        url = f"http://{LOOPBACK}:{self.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:  # /healthz answers 503 with a JSON body
            return json.loads(e.read() or b"{}")

    def healthy(self) -> bool:
        try:
            return self.monitor("/healthz").get("status") == "ok"
        except (OSError, ValueError):
            return False

    def mqtt_clients(self) -> list[str]:
        """MQTT client ids connected to this node (from /connz)."""
        out: list[str] = []
        offset = 0
        while True:
            page = self.monitor(f"/connz?limit=1024&offset={offset}", timeout=5.0)
            conns = page.get("connections") or []
            out += [c["mqtt_client"] for c in conns if c.get("mqtt_client")]
            offset += len(conns)
            if not conns or offset >= page.get("total", 0):
                return out

    def log_tail(self, lines: int = 30) -> str:
        return self.daemon.log_tail(lines) if self.daemon else ""


def render_conf(
    node: NatsNode, routes: list[int], *, host: str = LOOPBACK, sizing: dict | None = None
) -> str:
    route_lines = ",\n".join(f"    nats-route://{host}:{p}" for p in routes)
    values = {
        "NAME": node.name,
        "CLIENT_HOST": host,
        "CLIENT_PORT": node.client_port,
        "HTTP_HOST": host,
        "HTTP_PORT": node.http_port,
        "CLUSTER_HOST": host,
        "CLUSTER_PORT": node.cluster_port,
        "CLUSTER_NAME": CLUSTER_NAME,
        "MQTT_HOST": host,
        "MQTT_PORT": node.mqtt_port,
        "STORE_DIR": node.dir / "jetstream",
        "ROUTES": route_lines,
        **(sizing or TEST_SIZING),
    }
    text = render(TEMPLATE.read_text(), values)
    left = [w for w in text.split() if w.startswith("@") and w.endswith("@") and len(w) > 2]
    if left:
        raise DaemonError(f"{TEMPLATE}: placeholders left unrendered: {left}")
    return text


def launch(node: NatsNode) -> None:
    binary = require("nats-server")
    log = node.dir / "nats.log"
    out = open(node.dir / "nats.stdout", "ab")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen(
        [binary, "-c", str(node.conf), "-l", str(log)], stdout=out, stderr=subprocess.STDOUT
    )
    node.daemon = Daemon(
        f"nats-{node.name}", proc, log, node.mqtt_port, LOOPBACK, {"conf": node.conf}
    )


def mqtt_probe(
    port: int, username: str | None = None, password: str | None = None, timeout: float = 6.0
) -> str | None:
    """CONNECT and a QoS 1 SUBSCRIBE on one node; None when both succeed, else why not."""
    done = threading.Event()
    result: dict[str, object] = {}

    def on_connect(c, ud, flags, rc, props):
        result["connack"] = rc
        if rc.is_failure:
            done.set()
        else:
            c.subscribe(PROBE_TOPIC, qos=1)

    def on_subscribe(c, ud, mid, codes, props):
        result["suback"] = codes
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"devstack-probe-{port}")
    if username is not None:
        client.username_pw_set(username, password)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    try:
        client.connect(LOOPBACK, port, keepalive=10)
    except OSError as exc:
        return f"connect: {exc}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return f"no answer within {timeout:g} s ({result})"
        codes = result.get("suback")
        if codes is None:
            return f"CONNACK {result.get('connack')}"
        if any(getattr(c, "is_failure", False) for c in codes):  # type: ignore[attr-defined]
            return f"SUBACK {codes}"
        return None
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
        client.loop_stop()


def wait_ready(
    nodes: list[NatsNode], timeout: float, user: str | None, password: str | None
) -> None:
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    why = ""
    while pending:
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n.name} ---\n{n.log_tail()}" for n in pending)
            raise DaemonError(f"NATS nodes not ready within {timeout:g} s ({why}):\n{tails}")
        node = pending[0]
        if not node.alive():
            raise DaemonError(f"nats {node.name} exited:\n{node.log_tail()}")
        if not node.healthy():
            why = f"{node.name}: /healthz not ok"
            time.sleep(0.1)
            continue
        problem = mqtt_probe(node.mqtt_port, user, password)
        if problem is not None:
            why = f"{node.name}: {problem}"
            time.sleep(0.2)
            continue
        pending.pop(0)
