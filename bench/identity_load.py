"""Load for the identities figure (bench/identities.py): thousands of logged-in identities on
bare sockets, a pinger that times the broker's round trips while it reloads, and the dynamic
security plugin driven over its control topic (the alternative the figure compares with).

Bare sockets, not paho: a paho client's loop is a select(), which cannot watch a descriptor
above 1023, and thousands of connections are thousands of descriptors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path

from clockfleet.devstack import DaemonError


def _text(s: str) -> bytes:
    return struct.pack("!H", len(s.encode())) + s.encode()


def _packet(kind: int, body: bytes) -> bytes:
    length, n = b"", len(body)
    while True:
        n, digit = divmod(n, 128)
        length += bytes([digit | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + length + body


def connect_packet(user: str, secret: str) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, no keepalive (an idle bench socket is never timed
    out), client id = user name."""
    body = _text("MQTT") + bytes([4, 0xC2]) + struct.pack("!H", 0)
    return _packet(0x10, body + _text(user) + _text(user) + _text(secret))


def read_packet(sock: socket.socket) -> tuple[int, bytes]:
    head = sock.recv(1)
    if not head:
        raise ConnectionError("closed by the broker")
    length, shift = 0, 0
    while True:
        (digit,) = sock.recv(1)
        length += (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed by the broker")
        body += chunk
    return head[0], body


def login(port: int, user: str, secret: str, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(connect_packet(user, secret))
    kind, body = read_packet(sock)
    if kind != 0x20 or body[1:2] != b"\x00":
        sock.close()
        raise DaemonError(f"{user}: CONNACK {body!r}")
    return sock


def connect_many(port: int, creds: list[tuple[str, str]], batch: int = 200) -> list[socket.socket]:
    """Every identity logged in (CONNACK 0), in batches of CONNECTs sent before reading."""
    socks: list[socket.socket] = []
    for i in range(0, len(creds), batch):
        part = []
        for user, secret in creds[i : i + batch]:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(connect_packet(user, secret))
            part.append((user, sock))
        for user, sock in part:
            kind, body = read_packet(sock)
            if kind != 0x20 or body[1:2] != b"\x00":
                raise DaemonError(f"{user}: CONNACK {body!r}")
            socks.append(sock)
    return socks


class Pinger:
    """One identity publishing QoS 0 to a topic it reads, back to back, in a thread: every
    round trip timed, so a broker busy with a reload shows as one long round trip."""

    def __init__(self, port: int, user: str, secret: str, topic: str) -> None:
        self.sock = login(port, user, secret)
        self.topic = topic
        sub = struct.pack("!H", 1) + _text(topic) + b"\x00"
        self.sock.sendall(_packet(0x82, sub))
        kind, _ = read_packet(self.sock)
        if kind != 0x90:
            raise DaemonError(f"no SUBACK for {topic}")
        self.rtts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ping = _packet(0x30, _text(self.topic) + b"ping")
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self.sock.sendall(ping)
            read_packet(self.sock)
            self.rtts.append(time.perf_counter() - t0)

    def start(self) -> Pinger:
        self._thread.start()
        return self

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(10)
        self.sock.close()
        return self.rtts


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """time.monotonic() when the broker closed `sock`, or None if it did not within timeout."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(1)
    except OSError:
        return None
    return time.monotonic() if data == b"" else None


# --- The dynamic security plugin (the alternative) ---------------------------------------

DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
DYNSEC_CONF = """\
per_listener_settings false
allow_anonymous false
plugin @PLUGIN@
plugin_opt_config_file @RUNDIR@/dynamic-security.json
listener @PORT@ @HOST@
max_connections -1
log_dest file @RUNDIR@/mosquitto.log
"""


def dynsec_config(path: Path, admin_secret: str) -> None:
    """A dynamic-security.json with one admin client allowed on the control topic: what
    `mosquitto_ctrl dynsec init` writes, its hash computed the plugin's way."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", admin_secret.encode(), salt, 101, 64)
    acl = [
        {"acltype": kind, "topic": "$CONTROL/dynamic-security/#", "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")
    ]
    config = {
        "clients": [
            {
                "username": "admin",
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": 101,
                "roles": [{"rolename": "admin"}],
            }
        ],
        "roles": [{"rolename": "admin", "acls": acl}],
        "groups": [],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": False,
        },
    }
    path.write_text(json.dumps(config))


def dynsec_create(port: int, admin_secret: str, creds: list[tuple[str, str]], per: int) -> float:
    """createClient for every (user, secret) over the control topic, `per` commands a
    message; seconds until the plugin has answered them all (each one saves its whole
    config file)."""
    sock = login(port, "admin", admin_secret, timeout=600)
    response = "$CONTROL/dynamic-security/v1/response"
    sock.sendall(_packet(0x82, struct.pack("!H", 1) + _text(response) + b"\x00"))
    read_packet(sock)
    t0 = time.monotonic()
    for i in range(0, len(creds), per):
        commands = [
            {"command": "createClient", "username": u, "password": s} for u, s in creds[i : i + per]
        ]
        payload = json.dumps({"commands": commands}).encode()
        sock.sendall(_packet(0x30, _text("$CONTROL/dynamic-security/v1") + payload))
    answered = 0
    while answered < len(creds):
        kind, body = read_packet(sock)
        if kind & 0xF0 != 0x30:
            continue
        (topic_len,) = struct.unpack("!H", body[:2])
        responses = json.loads(body[2 + topic_len :])["responses"]
        errors = [r for r in responses if r.get("error")]
        if errors:
            raise DaemonError(f"dynamic security refused: {errors[0]}")
        answered += len(responses)
    elapsed = time.monotonic() - t0
    sock.close()
    return elapsed
