"""The edge broker of one data centre: make-bridges' edge-DC.conf, started with its ports and
paths replaced, agents only, over TLS, each as its own identity from the edge's own
clockfleet-identities directory."""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clockfleet.devstack.bridge_configs import edge_template
from clockfleet.devstack.bridge_link import LinkProxy
from clockfleet.devstack.daemons import DaemonError
from clockfleet.devstack.mosquitto import ROLES, ShippedBroker, launch, provision, record
from clockfleet.protocol.connection import ConnectionSettings


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


@dataclass
class Edge(ShippedBroker):
    """A ShippedBroker whose only listener is its TLS one (`tls_port` is the daemon's port):
    every login goes over TLS, with the test CA."""

    dc: str = field(default="", kw_only=True)

    @property
    def url(self) -> str:
        # The test CA's server certificate names localhost (and 127.0.0.1).
        return self.tls_url

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
            self.host, self.port, self.ca_file, new[0], self.password(new[0])
        ):
            if time.monotonic() > deadline:
                raise DaemonError(f"edge {self.dc} did not take identity {new[0]} after SIGHUP")
            time.sleep(0.02)

    def login(self, identity: str, *, tls: bool = True) -> list[str]:
        """Connection flags for a clockfleet command as this identity on this edge."""
        return super().login(identity, tls=True)

    def settings(self, identity: str, *, tls: bool = True) -> ConnectionSettings:
        return super().settings(identity, tls=True)


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
    template = edge_template(generated, dc, central_address, ids, certs, (link.host, link.port))
    record("bridges", shipped=True)
    daemon = launch(rundir / "mosquitto", template)
    # As generated (mode 0600): the copy Mosquitto runs holds the bridge's password too.
    Path(daemon.files["conf"]).chmod(0o600)
    return Edge(daemon, rundir, ids, certs, daemon.port, set(agents), dc=dc)
