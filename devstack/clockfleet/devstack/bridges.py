"""A central Mosquitto and one edge Mosquitto per data centre, bridged, on loopback: what an
operator gets from broker/bridges/make-bridges and broker/clockfleet-identities.

    topo = start_central_and_edges(rundir, edges=2, agents=["pbx-01"])
    topo.settings("publisher")            # central, plain loopback listener
    topo.settings("pbx-01", agent=0)      # agent 0 on edge dc1 (i % edges), TLS
    topo.edge(1).settings("pbx-02")       # an agent of edge dc2
    topo.login("operator")                # flags for `clockfleet ...` on central
    topo.add("pbx-03")                    # on central and every edge, SIGHUP, no restart
    topo.cut(0); topo.restore(0)          # the link of dc1 (both brokers keep running)
    topo.wait_bridges(up=False, only=[0]) # as central's operator sees it

How it is built, as the operator's steps in docs/bridges.md:
1. `make-bridges --names` names the bridge identities;
2. `clockfleet-identities` writes central's password file: the roles, the agents, the bridges;
3. `make-bridges --out ... --bridge-ca CA` writes central.conf, central.acl, edge.acl and one
   edge-DC.conf per data centre (the script runs, nothing is re-assembled here);
4. each edge's own `clockfleet-identities` directory holds its agents.
The generated configs run with only their ports and paths replaced (`replace_once`: each
replaced line must occur exactly once, so a change to the generator that this does not follow
fails loudly instead of testing something else). Central runs TLS for the bridges and keeps
the shipped plain loopback listener for the publisher, collector and operator, which run on
its host here; edges have only the TLS listener the generator writes, so agents use TLS.

Each edge reaches central's TLS listener through its own LinkProxy, a small TCP relay that can
cut the link (drop the connection and refuse new ones) and restore it while both brokers run.
Every broker start is recorded (mosquitto.record, kind "bridges"); a start that leaves out an
ACL line is not the shipped configuration and must say why.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from clockfleet.devstack.daemons import LOOPBACK, Daemon, DaemonError, restart, stable_ports
from clockfleet.devstack.mosquitto import (
    ROLES,
    ShippedBroker,
    launch,
    make_test_ca,
    provision,
    record,
)
from clockfleet.protocol.connection import ConnectionSettings, new_client, settings_from_args

REPO = Path(__file__).resolve().parents[3]
MAKE_BRIDGES = REPO / "broker" / "bridges" / "make-bridges"
PREFIX = "clock/v1"
STATE_FILTER = "$SYS/broker/connection/+/state"
# The generated central ACL lets the operator read every bridge's state (P8's signal); no
# other identity may, on central or on an edge.
WATCHER = "operator"


@cache
def generator() -> ModuleType:
    """broker/bridges/make-bridges as a module (it is a script without a .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("clockfleet_make_bridges", str(MAKE_BRIDGES))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def run_generator(*args: str | Path) -> str:
    """broker/bridges/make-bridges ARGS, as an operator runs it; its standard output."""
    done = subprocess.run(
        [str(MAKE_BRIDGES), *map(str, args)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise DaemonError(f"make-bridges {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout


def dc_name(k: int) -> str:
    return f"dc{k + 1}"


def replace_once(text: str, substitutions: dict[str, str], what: str) -> str:
    for old, new in substitutions.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"{what}: {old.strip()!r} occurs {count} times, not once")
        text = text.replace(old, new)
    return text


# --- A TCP relay that can cut the bridge's link ----------------------------------------------


class LinkProxy:
    """Relays 127.0.0.1:port to a target; cut() drops every connection and refuses new ones
    (accepted, then closed at once: the bridge sees its connection fail, as when central's
    port is unreachable) until restore(). TLS passes through untouched."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOOPBACK, 0))
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

    @property
    def linked(self) -> bool:
        """A connection is relayed now (the edge's bridge has a TCP path to central)."""
        with self._lock:
            return bool(self._open)

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


# --- The generated configs with their ports and paths replaced -------------------------------


def central_template(generated: Path, ids: Path, certs: Path, tls_port: int, acl: Path) -> str:
    """make-bridges' central.conf with the substitutions mosquitto.production_template makes
    to broker/mosquitto.conf (central.conf is that file with central's changes)."""
    return replace_once(
        (generated / "central.conf").read_text(),
        {
            "\nlistener 8883\n": f"\nlistener {tls_port} {LOOPBACK}\n",
            "\nlistener 1883 127.0.0.1\n": "\nlistener @PORT@ @HOST@\n",
            "\npassword_file /etc/mosquitto/clockfleet/passwd\n": f"\npassword_file {ids}/passwd\n",
            "\nacl_file /etc/mosquitto/clockfleet/acl\n": f"\nacl_file {acl}\n",
            "\ncafile /etc/mosquitto/certs/ca.crt\n": f"\ncafile {certs}/ca.crt\n",
            "\ncertfile /etc/mosquitto/certs/server.crt\n": f"\ncertfile {certs}/server.crt\n",
            "\nkeyfile /etc/mosquitto/certs/server.key\n": f"\nkeyfile {certs}/server.key\n",
            "\npersistence_location /var/lib/mosquitto/\n": "\npersistence_location @RUNDIR@/\n",
            "\nlog_dest file /var/log/mosquitto/mosquitto.log\n": (
                "\nlog_dest file @RUNDIR@/mosquitto.log\n"
            ),
        },
        "make-bridges' central.conf",
    )


def edge_substitutions(
    central: str, ids: Path, certs: Path, acl: Path, link: tuple[str, int]
) -> dict[str, str]:
    """What an edge-DC.conf gets replaced: its listener's port, its files' paths, and the
    address of central (this edge's LinkProxy instead: one relay per edge, so one link can be
    cut while the others stay up)."""
    return {
        "\nlistener 8883\n": "\nlistener @PORT@ @HOST@\n",
        "\npassword_file /etc/mosquitto/clockfleet/passwd\n": f"\npassword_file {ids}/passwd\n",
        "\nacl_file /etc/mosquitto/clockfleet/edge.acl\n": f"\nacl_file {acl}\n",
        "\ncafile /etc/mosquitto/certs/ca.crt\n": f"\ncafile {certs}/ca.crt\n",
        "\ncertfile /etc/mosquitto/certs/server.crt\n": f"\ncertfile {certs}/server.crt\n",
        "\nkeyfile /etc/mosquitto/certs/server.key\n": f"\nkeyfile {certs}/server.key\n",
        "\npersistence_location /var/lib/mosquitto/\n": "\npersistence_location @RUNDIR@/\n",
        "\nlog_dest file /var/log/mosquitto/mosquitto.log\n": (
            "\nlog_dest file @RUNDIR@/mosquitto.log\n"
        ),
        f"\naddress {central}\n": f"\naddress {link[0]}:{link[1]}\n",
    }


def without_lines(acl: str, lines: Sequence[str]) -> str:
    """The ACL without these whole lines (each must be there: a test that removes a line
    the generator no longer writes would show nothing)."""
    kept = acl.splitlines()
    for line in lines:
        if line not in kept:
            raise AssertionError(f"the generated central.acl has no line {line!r}")
        kept = [k for k in kept if k != line]
    return "\n".join(kept) + "\n"


# --- Logging in over TLS ---------------------------------------------------------------------


def connect_packet(user: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, keepalive 10 s) as this identity."""

    def text(s: str) -> bytes:
        b = s.encode()
        return struct.pack("!H", len(b)) + b

    body = text("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 10)
    body += text(user) + text(user) + text(password)
    length, n = b"", len(body)
    while True:  # MQTT's variable-length integer
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + length + body


def tls_login_accepted(
    host: str, port: int, ca_file: Path, user: str, password: str, timeout: float = 2.0
) -> bool:
    """mosquitto.login_accepted over TLS (an edge has no plain listener). Only for identities
    nobody uses yet: client ids are user names, so it would knock a session off."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
        with raw, context.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(connect_packet(user, password))
            answer = s.recv(4)
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT: no will, no noise in the log
    except OSError:  # ssl.SSLError included
        return False
    return len(answer) == 4 and answer[0] == 0x20 and answer[3] == 0


# --- An edge ---------------------------------------------------------------------------------


@dataclass
class Edge:
    """The edge broker of one data centre, from its generated edge-DC.conf: agents only, over
    TLS, each as its own identity from the edge's own clockfleet-identities directory."""

    dc: str
    daemon: Daemon
    rundir: Path
    identities: Path
    ca_file: Path
    known: set[str] = field(default_factory=set)

    @property
    def host(self) -> str:
        return self.daemon.host

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def url(self) -> str:
        # The test CA's server certificate names localhost (and 127.0.0.1).
        return f"mqtts://localhost:{self.daemon.port}"

    def add(self, *agents: str) -> None:
        """Provision the agents this edge does not know yet, then SIGHUP (Mosquitto reloads
        its password file and ACL) and wait until the first of them can log in."""
        new = [a for a in dict.fromkeys(agents) if a not in self.known and a not in ROLES]
        if not new:
            return
        provision(self.identities, new)
        self.known.update(new)
        self.daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not tls_login_accepted(
            self.host, self.port, self.ca_file, new[0], self._read(new[0])
        ):
            if time.monotonic() > deadline:
                raise DaemonError(f"edge {self.dc} did not take identity {new[0]} after SIGHUP")
            time.sleep(0.02)

    def _read(self, identity: str) -> str:
        return (self.identities / f"{identity}.password").read_text().strip()

    def password_file(self, identity: str) -> Path:
        self.add(identity)
        return self.identities / f"{identity}.password"

    def password(self, identity: str) -> str:
        return self.password_file(identity).read_text().strip()

    def login(self, identity: str) -> list[str]:
        """Connection flags for a clockfleet command as this identity on this edge."""
        return [
            *("--broker", self.url, "--username", identity),
            *("--password-file", str(self.password_file(identity)), "--ca-file", str(self.ca_file)),
        ]

    def settings(self, identity: str) -> ConnectionSettings:
        return settings_from_args(
            argparse.Namespace(
                broker=self.url,
                username=identity,
                password_file=str(self.password_file(identity)),
                ca_file=str(self.ca_file),
            )
        )

    def stop(self) -> None:
        self.daemon.stop()

    def kill(self) -> None:
        self.daemon.kill()

    def restart(self) -> None:
        """Start it again with the same config, state and port (after stop() or kill())."""
        self.daemon = restart(self.daemon)


# --- Watching the bridges from central -------------------------------------------------------


def watch_bridges(
    settings: ConnectionSettings,
    done: Callable[[dict[str, str]], bool],
    timeout_s: float = 2.0,
) -> dict[str, str]:
    """The bridges' `$SYS/broker/connection/bridge-DC/state` values (DC -> "1" up / "0"
    down), retained and live, as `settings` reads them, until done(states) or the timeout.
    {} when the broker cannot be reached."""
    states: dict[str, str] = {}
    refused: list[str] = []
    cond = threading.Condition()
    client = new_client(settings)

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            with cond:
                refused.append(str(rc))
                cond.notify_all()
            return
        c.subscribe(STATE_FILTER, qos=0)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        name = msg.topic.split("/")[3].removeprefix("bridge-")
        with cond:
            states[name] = msg.payload.decode(errors="replace")
            cond.notify_all()

    client.on_connect, client.on_message = on_connect, on_message
    address = settings.brokers[0]
    try:
        client.connect(address.host, address.port)
    except OSError:
        return {}
    client.loop_start()
    try:
        with cond:
            cond.wait_for(lambda: refused or done(states), timeout_s)
            if refused:
                raise DaemonError(f"{settings.username} may not log in to read bridges: {refused}")
            return dict(states)
    finally:
        client.disconnect()
        client.loop_stop()


# --- The topology ----------------------------------------------------------------------------


@dataclass
class CentralAndEdges:
    """topologies.Topology: publisher, collector and operator on central; agent i on edge
    i % edges."""

    rundir: Path
    central: ShippedBroker
    edges: list[Edge]
    proxies: list[LinkProxy]
    name: str = "bridges"
    stopped: bool = field(default=False, repr=False)

    @property
    def dcs(self) -> list[str]:
        return [e.dc for e in self.edges]

    def edge_of(self, i: int) -> int:
        return i % len(self.edges)

    def edge(self, k: int) -> Edge:
        return self.edges[k]

    def settings(self, identity: str, *, agent: Optional[int] = None) -> ConnectionSettings:
        """Agent number `agent` logs in on its edge; everything else on central."""
        if agent is None:
            return self.central.settings(identity)
        return self.edges[self.edge_of(agent)].settings(identity)

    def login(self, identity: str) -> list[str]:
        return self.central.login(identity)

    def add(self, *agents: str) -> None:
        """On central (whose password file holds every agent, docs/bridges.md) and on every
        edge: which edge an agent uses is decided when it connects (settings(agent=i)), and
        one reload per broker keeps adding many agents cheap."""
        self.central.add(*agents)
        for e in self.edges:
            e.add(*agents)

    # Cuts: the link only (both brokers run), or central itself.
    def cut(self, k: int) -> None:
        self.proxies[k].cut()

    def restore(self, k: int) -> None:
        self.proxies[k].restore()

    def kill_central(self) -> None:
        self.central.kill()

    def restart_central(self) -> None:
        self.central.restart()

    def states(self, timeout_s: float = 2.0) -> dict[str, str]:
        """DC -> "1"/"0" as central's operator sees it. The values are retained: after a
        SIGKILLed central restarts they show the persisted state until each bridge returns."""
        return watch_bridges(
            self.central.settings(WATCHER), lambda s: set(self.dcs) <= set(s), timeout_s
        )

    def wait_bridges(
        self, up: bool = True, timeout_s: float = 60.0, only: Sequence[int] | None = None
    ) -> None:
        """Until central shows these bridges (indices; default all) up or down. Central must
        be running: a dead central shows nothing."""
        want = "1" if up else "0"
        names = [self.dcs[k] for k in (only if only is not None else range(len(self.edges)))]
        states = watch_bridges(
            self.central.settings(WATCHER),
            lambda s: all(s.get(n) == want for n in names),
            timeout_s,
        )
        if not all(states.get(n) == want for n in names):
            raise DaemonError(f"bridges {names} not {'up' if up else 'down'}: {states}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for e in self.edges:
            e.stop()
        for p in self.proxies:
            p.close()
        self.central.stop()


def start_central_and_edges(
    rundir: Path,
    edges: int = 2,
    *,
    agents: Sequence[str] = (),
    without_acl_lines: Sequence[str] = (),
    why: str = "",
    before_edges: Callable[[ShippedBroker], None] | None = None,
    timeout_s: float = 30.0,
) -> CentralAndEdges:
    """Central and `edges` edges (dc1, dc2, ...) as generated, each bridged over TLS through
    its own LinkProxy; `agents` provisioned on central and every edge. Returns once central's
    operator sees every bridge up.

    without_acl_lines: whole lines to leave out of the generated central.acl, which makes
    central no longer the shipped configuration: `why` must say why. before_edges(central):
    runs before any edge starts (to fill central first)."""
    rundir.mkdir(parents=True, exist_ok=True)
    dcs = [dc_name(k) for k in range(edges)]
    dc_args = [a for dc in dcs for a in ("--dc", dc)]
    bridges = run_generator("--names", *dc_args).split()
    central_dir = rundir / "central"
    ids = provision(central_dir / "ids", [*agents, *bridges])
    certs = make_test_ca(rundir / "ca")
    tls_port, plain_port = stable_ports(2)
    central_address = f"{LOOPBACK}:{tls_port}"
    generated = rundir / "generated"
    # --bridge-ca is the generator's own option (TLS is its default, --plain is for loopback
    # only): the edges verify central against the test CA as they would against a real one.
    run_generator(
        *("--out", generated, "--central", central_address, "--identities", ids),
        *("--bridge-ca", certs / "ca.crt", *dc_args),
    )
    acl = generated / "central.acl"
    if without_acl_lines:
        acl = central_dir / "central.acl"
        acl.write_text(without_lines((generated / "central.acl").read_text(), without_acl_lines))
    record("bridges", shipped=not without_acl_lines, why=why)
    daemon = launch(
        central_dir / "mosquitto",
        central_template(generated, ids, certs, tls_port, acl),
        port=plain_port,
    )
    central = ShippedBroker(daemon, central_dir, ids, certs, tls_port, {*agents, *bridges})
    topo = CentralAndEdges(rundir, central, [], [])
    try:
        if before_edges is not None:
            before_edges(central)
        for dc in dcs:
            proxy = LinkProxy(LOOPBACK, tls_port)
            topo.proxies.append(proxy)
            topo.edges.append(
                start_edge(
                    rundir / f"edge-{dc}", dc, generated, certs, central_address, proxy, agents
                )
            )
        topo.wait_bridges(up=True, timeout_s=timeout_s)
    except BaseException:
        topo.stop()
        raise
    return topo


def start_edge(
    rundir: Path,
    dc: str,
    generated: Path,
    certs: Path,
    central_address: str,
    link: LinkProxy,
    agents: Sequence[str] = (),
) -> Edge:
    """make-bridges' edge-DC.conf with its ports and paths replaced, its own identities and
    the test CA's server certificate (the one central has: both are named localhost)."""
    ids = provision(rundir / "ids", list(agents))
    template = replace_once(
        (generated / f"edge-{dc}.conf").read_text(),
        edge_substitutions(
            central_address, ids, certs, generated / "edge.acl", (link.host, link.port)
        ),
        f"make-bridges' edge-{dc}.conf",
    )
    record("bridges", shipped=True)
    daemon = launch(rundir / "mosquitto", template)
    # As generated (mode 0600): the copy Mosquitto runs holds the bridge's password too.
    Path(daemon.files["conf"]).chmod(0o600)
    return Edge(dc, daemon, rundir, ids, certs / "ca.crt", set(agents))
