"""A central Mosquitto and one edge Mosquitto per data centre, bridged, on loopback.

The bridge sections, the edge limits and central's ACL blocks are the ones
broker/bridges/make-bridges writes for production (its functions are imported here), so the
end-to-end tests, the cut tests and the benchmark run the shipped bridge settings. What
differs from production, for loopback tests only: plain listeners, and anonymous clients (the
end-to-end suite's clients carry no credentials). The bridges themselves do log in to central
with their own identities and central's ACL applies to them exactly as generated (an ACL
mistake silently drops messages, and the tests would see it).

Each edge reaches central through its own LinkProxy, a small TCP relay that can cut the link
(drop the connection and refuse new ones) and restore it, while both brokers keep running.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import secrets
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import devstack

REPO = Path(__file__).resolve().parents[3]
MAKE_BRIDGES = REPO / "broker" / "bridges" / "make-bridges"
PREFIX = "clock/v1"
# A topic no clockfleet program reads: marks the end of a retained snapshot.
SENTINEL = f"{PREFIX}/devstack/sentinel"


@cache
def generator() -> ModuleType:
    """broker/bridges/make-bridges as a module (it is a script without a .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("clockfleet_make_bridges", str(MAKE_BRIDGES))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# --- A TCP relay that can cut the bridge's link ----------------------------------------------


class LinkProxy:
    """Relays 127.0.0.1:port to a target; cut() drops every connection and refuses new ones
    (accepted, then closed at once: the bridge sees its connection fail, as when central's
    port is unreachable) until restore()."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((devstack.LOOPBACK, 0))
        self.sock.listen(64)
        self.host, self.port = self.sock.getsockname()[:2]
        self._lock = threading.Lock()
        self._cut = False
        self._closed = False
        self._open: set[socket.socket] = set()
        self.accepted = 0
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                refuse = self._cut or self._closed
            if refuse:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            for s in (src, dst):
                s.close()

    def _drop_all(self) -> None:
        with self._lock:
            conns = list(self._open)
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            self._cut = True
        self._drop_all()

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._drop_all()


# --- Test configs around the generated blocks ------------------------------------------------

CENTRAL_TEST_CONF = """\
# central (loopback test): plain listener, anonymous test clients; the bridges log in.
per_listener_settings false
listener @PORT@ @HOST@
allow_anonymous true
password_file @PASSWORD_FILE@
acl_file @ACL_FILE@
persistence true
persistence_location @RUNDIR@/
autosave_interval 1
persistent_client_expiration 1d
max_queued_messages @MAXQ@
max_packet_size 70000
set_tcp_nodelay true
log_dest file @RUNDIR@/mosquitto.log
connection_messages true
"""

EDGE_TEST_HEAD = """\
# edge (loopback test): plain listener, anonymous test clients.
per_listener_settings false
listener @PORT@ @HOST@
allow_anonymous true
persistence_location @RUNDIR@/
log_dest file @RUNDIR@/mosquitto.log
connection_messages true
"""

# Anonymous test clients (publisher, collector, agents, the tests' probes) may do anything
# under the prefix and read $SYS; these lines come before any `user` line, so they apply to
# anonymous clients only. The generated bridge blocks follow as written for production.
ANONYMOUS_ACL = f"topic readwrite {PREFIX}/#\ntopic read $SYS/#\n"


def dc_name(k: int) -> str:
    return f"dc{k + 1}"


def write_passwd(path: Path, users: dict[str, str]) -> Path:
    binary = devstack.require("mosquitto_passwd")
    path.write_text("")
    for user, password in users.items():
        subprocess.run([binary, "-b", str(path), user, password], check=True, capture_output=True)
    path.chmod(0o644)
    return path


def central_acl(dcs: list[str], *, skip_lines: tuple[str, ...] = ()) -> str:
    """Anonymous test grants plus the generated bridge blocks (skip_lines: for tests that
    show what a missing ACL line does)."""
    gen = generator()
    blocks = "".join("\n" + gen.central_acl_block(dc, PREFIX) for dc in dcs)
    kept = [line for line in blocks.splitlines() if line not in skip_lines]
    return ANONYMOUS_ACL + "\n".join(kept) + "\n"


def start_central(
    rundir: Path,
    dcs: list[str],
    passwords: dict[str, str],
    *,
    conf_template: str = CENTRAL_TEST_CONF,
    skip_acl_lines: tuple[str, ...] = (),
) -> devstack.Daemon:
    gen = generator()
    rundir.mkdir(parents=True, exist_ok=True)
    passwd = write_passwd(
        rundir / "passwd", {gen.bridge_identity(dc, PREFIX): passwords[dc] for dc in dcs}
    )
    acl = rundir / "central.acl"
    acl.write_text(central_acl(dcs, skip_lines=skip_acl_lines))
    return devstack.start_mosquitto(
        rundir / "central",
        conf_template=conf_template,
        values={"PASSWORD_FILE": passwd, "ACL_FILE": acl, "MAXQ": gen.central_queue()},
    )


def start_edge(
    rundir: Path, dc: str, central: tuple[str, int], password: str, *, head: str = EDGE_TEST_HEAD
) -> devstack.Daemon:
    gen = generator()
    text = head + gen.edge_settings(1000) + "\n"
    text += gen.bridge_block(dc, f"{central[0]}:{central[1]}", password, prefix=PREFIX)
    return devstack.start_mosquitto(rundir / f"edge-{dc}", conf_template=text)


# --- Watching the bridges from central -------------------------------------------------------


def bridge_states(host: str, port: int, timeout_s: float = 2.0) -> dict[str, str]:
    """The retained `$SYS/broker/connection/bridge-DC/state` values on a broker: DC -> 0/1."""
    states: dict[str, str] = {}
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)

    def on_connect(client, userdata, flags, rc, props):
        client.subscribe("$SYS/broker/connection/+/state", qos=0)
        client.subscribe(SENTINEL, qos=0)
        client.publish(SENTINEL, b"", qos=0)

    def on_message(client, userdata, msg):
        if msg.topic.startswith("$SYS/"):
            name = msg.topic.split("/")[3]
            states[name.removeprefix("bridge-")] = msg.payload.decode(errors="replace")
        else:
            done.set()

    c.on_connect, c.on_message = on_connect, on_message
    try:
        c.connect(host, port)
    except OSError:
        return {}
    c.loop_start()
    done.wait(timeout_s)
    c.disconnect()
    c.loop_stop()
    return states


# --- The topology ----------------------------------------------------------------------------


@dataclass
class CentralAndEdges:
    """topologies.Topology: publisher and collector on central, agent i on edge i % edges."""

    rundir: Path
    central: devstack.Daemon
    edges: list[devstack.Daemon]
    proxies: list[LinkProxy]
    dcs: list[str]
    passwords: dict[str, str]
    name: str = "bridges"
    stopped: bool = field(default=False, repr=False)

    @property
    def central_url(self) -> str:
        return f"mqtt://{self.central.host}:{self.central.port}"

    @property
    def publisher_url(self) -> str:
        return self.central_url

    @property
    def collector_url(self) -> str:
        return self.central_url

    def edge_of(self, i: int) -> int:
        return i % len(self.edges)

    def edge_url(self, k: int) -> str:
        e = self.edges[k]
        return f"mqtt://{e.host}:{e.port}"

    def agent_url(self, i: int) -> str:
        return self.edge_url(self.edge_of(i))

    # Cuts: the link only (both brokers run), or central itself.
    def cut(self, k: int) -> None:
        self.proxies[k].cut()

    def restore(self, k: int) -> None:
        self.proxies[k].restore()

    def kill_central(self) -> None:
        self.central.kill()

    def restart_central(self) -> None:
        self.central = devstack.restart(self.central)

    def states(self, on: str = "edges") -> dict[str, str]:
        """DC -> "1"/"0" as each edge sees its own bridge (on="edges": the truth, published
        by the edge itself) or as central holds it (on="central": retained, so after a
        SIGKILLed central restarts it shows the persisted value until the bridge returns)."""
        if on == "central":
            return bridge_states(self.central.host, self.central.port)
        out: dict[str, str] = {}
        for k, e in enumerate(self.edges):
            state = bridge_states(e.host, e.port).get(self.dcs[k])
            if state is not None:
                out[self.dcs[k]] = state
        return out

    def wait_bridges(self, up: bool = True, timeout_s: float = 60.0, only=None) -> None:
        want = "1" if up else "0"
        names = [self.dcs[k] for k in (only if only is not None else range(len(self.dcs)))]
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.states()
            if all(states.get(n) == want for n in names):
                return
            time.sleep(0.2)
        raise devstack.DaemonError(f"bridges {names} not {'up' if up else 'down'}: {states}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for e in self.edges:
            e.stop()
        for p in self.proxies:
            p.close()
        self.central.stop()


def start_central_and_edges(rundir: Path, edges: int = 2) -> CentralAndEdges:
    """Central, `edges` edges (dc1, dc2, ...) each bridged through its own LinkProxy; returns
    once every bridge reports itself up on central."""
    dcs = [dc_name(k) for k in range(edges)]
    passwords = {dc: secrets.token_urlsafe(18) for dc in dcs}
    central = start_central(rundir, dcs, passwords)
    proxies: list[LinkProxy] = []
    started: list[devstack.Daemon] = []
    topo = CentralAndEdges(rundir, central, started, proxies, dcs, passwords)
    try:
        for dc in dcs:
            proxy = LinkProxy(central.host, central.port)
            proxies.append(proxy)
            started.append(start_edge(rundir, dc, (proxy.host, proxy.port), passwords[dc]))
        topo.wait_bridges(up=True, timeout_s=30)
    except BaseException:
        topo.stop()
        raise
    return topo
