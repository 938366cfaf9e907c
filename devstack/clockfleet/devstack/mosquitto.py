"""Mosquitto for the tests, the demo and the benchmarks: the shipped configuration by default.

    broker = start_shipped(rundir, agents=["acme-01"])   # broker/mosquitto.conf, as shipped
    broker.settings("acme-01")        # ConnectionSettings for that identity (plain loopback)
    broker.settings("operator", tls=True)   # the TLS listener, the test CA
    broker.login("publisher")         # the same as command-line flags
    broker.add("acme-02")             # broker/clockfleet-identities, then SIGHUP: no restart
    broker.revoke("acme-02")          # --revoke, SIGHUP, back once it is in force

    start_open(rundir, why="...")     # anonymous access, only with a reason

`start_shipped` runs broker/mosquitto.conf itself, with only its paths and ports replaced
(mosquitto_conf.py's `production_template`): identities written by
broker/clockfleet-identities, broker/acl, the TLS listener with a test CA, and the plain
loopback listener the config keeps for programs on the broker's own host. Any agent id a
test names is provisioned on first use, as an operator adds a host. An open broker needs a
reason, and every start is recorded in STARTS so the test suite can say how many of its
brokers run the shipped configuration (tests/conftest.py).

Mosquitto reads nothing from the checkout itself: a checkout may sit under a directory its
user cannot enter (/root is 0700 on Debian), so the ACL is copied into the run directory.
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
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType

from clockfleet.devstack.daemons import (
    LOOPBACK,
    Daemon,
    DaemonError,
    is_root,
    render,
    require,
    restart,
    stable_ports,
    wait_tcp,
)
from clockfleet.devstack.mosquitto_conf import BROKER_DIR, production_template
from clockfleet.protocol.connection import ConnectionSettings, settings_from_args

REPO = Path(__file__).resolve().parents[3]
IDENTITIES_TOOL = BROKER_DIR / "clockfleet-identities"
MAKE_TEST_CA = BROKER_DIR / "make-test-ca"
ACL = BROKER_DIR / "acl"


@cache
def script_module(path: Path, name: str) -> ModuleType:
    """A script of broker/ as a module (they are files without a .py suffix)."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# The roles broker/clockfleet-identities makes (the one list of them, docs/decisions.md).
ROLES: tuple[str, ...] = tuple(script_module(IDENTITIES_TOOL, "clockfleet_identities").ROLES)


# --- What was started, and why -------------------------------------------------------------


@dataclass(frozen=True)
class BrokerStart:
    kind: str  # mosquitto, nats, bridges
    shipped: bool
    why: str = ""


STARTS: list[BrokerStart] = []


def record(kind: str, *, shipped: bool, why: str = "") -> None:
    """Note a broker start; one that is not the shipped configuration must say why."""
    if not shipped and not why.strip():
        raise ValueError(f"an open {kind} broker needs a reason (why=...)")
    STARTS.append(BrokerStart(kind, shipped, why.strip()))


# --- Starting Mosquitto from a template ----------------------------------------------------

OPEN_CONF = """\
per_listener_settings false
listener @PORT@ @HOST@
allow_anonymous true
persistence true
persistence_location @RUNDIR@/
autosave_interval 1
max_queued_messages 100000
log_dest file @RUNDIR@/mosquitto.log
"""


def launch(
    rundir: Path,
    conf_template: str,
    *,
    port: int | None = None,
    host: str = LOOPBACK,
    values: dict[str, str | int] | None = None,
    timeout: float = 10.0,
) -> Daemon:
    """Start mosquitto from a template with @PORT@, @HOST@, @RUNDIR@ placeholders (no record:
    callers are start_shipped, start_open and the bridges, which record what they start)."""
    binary = require("mosquitto")
    rundir.mkdir(parents=True, exist_ok=True)
    port = port or stable_ports(1, host=host)[0]
    text = render(conf_template, {"PORT": port, "HOST": host, "RUNDIR": rundir, **(values or {})})
    if is_root() and "\nuser " not in "\n" + text:
        text += "user root\n"  # as root mosquitto drops to a user who cannot write rundir
    conf = rundir / "mosquitto.conf"
    conf.write_text(text)
    log = rundir / "mosquitto.log"
    out = open(rundir / "mosquitto.stdout", "ab")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    d = Daemon("mosquitto", proc, log, port, host, {"conf": conf})
    if not wait_tcp(host, port, proc, timeout):
        d.stop()
        raise DaemonError(
            f"mosquitto did not listen on {host}:{port}: "
            f"{(rundir / 'mosquitto.stdout').read_text(errors='replace')[-2000:]}{d.log_tail()}"
        )
    return d


def start_open(
    rundir: Path, *, why: str, conf_template: str = OPEN_CONF, **kwargs: object
) -> Daemon:
    """An anonymous Mosquitto: only where a test or benchmark says why the shipped
    configuration is not the point (the reason is recorded and printed by the test run)."""
    record("mosquitto", shipped=False, why=why)
    return launch(rundir, conf_template, **kwargs)  # type: ignore[arg-type]


# --- The shipped configuration -------------------------------------------------------------


def identities_tool(ids_dir: Path, *args: str) -> str:
    """broker/clockfleet-identities --out ids_dir ARGS, with this interpreter (the one that has
    bcrypt, for --nats); the secrets stay beside the hashes (the tests' deployment templates).
    Its standard output."""
    result = subprocess.run(
        [sys.executable, str(IDENTITIES_TOOL), "--out", str(ids_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise DaemonError(f"clockfleet-identities {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def provision(
    ids_dir: Path, agents: list[str] | tuple[str, ...] = (), *, nats: bool = False
) -> Path:
    """broker/clockfleet-identities --out ids_dir AGENTS...: adds, never removes (`nats`: the
    bcrypt hashes for NATS too)."""
    identities_tool(ids_dir, *agents, *(["--nats"] if nats else []))
    return ids_dir


def make_test_ca(out: Path) -> Path:
    subprocess.run([str(MAKE_TEST_CA), str(out)], check=True, capture_output=True, timeout=60)
    return out


def copy_acl(rundir: Path, acl: Path = ACL, extra: str = "") -> Path:
    """broker/acl where Mosquitto can read it, whatever user it runs as."""
    rundir.mkdir(parents=True, exist_ok=True)
    target = rundir / "acl"
    target.write_text(acl.read_text() + extra)
    target.chmod(0o644)
    return target


def connect_packet(user: str, password: str) -> bytes:
    """An MQTT 3.1.1 CONNECT (clean session, client id = user name, keepalive 10 s)."""

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
            return b"\x10" + length + body


def login_accepted(
    host: str,
    port: int,
    user: str,
    password: str,
    timeout: float = 2.0,
    *,
    ca_file: Path | None = None,
) -> bool:
    """One bare MQTT 3.1.1 CONNECT: does the broker take these credentials now? With
    `ca_file`: over TLS, verified against that CA as server `localhost` (the test CA's name;
    an edge has only a TLS listener). Only for identities nobody uses yet: client ids are
    user names, so it would knock a session off."""
    try:
        with contextlib.ExitStack() as stack:
            s = stack.enter_context(socket.create_connection((host, port), timeout=timeout))
            if ca_file is not None:
                context = ssl.create_default_context(cafile=str(ca_file))
                s = stack.enter_context(context.wrap_socket(s, server_hostname="localhost"))
            s.sendall(connect_packet(user, password))
            answer = s.recv(4)
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT: no will, no noise in the log
    except OSError:  # ssl.SSLError included
        return False
    return len(answer) == 4 and answer[0] == 0x20 and answer[3] == 0


@dataclass
class ShippedBroker:
    """Mosquitto running broker/mosquitto.conf; identities provisioned as an operator would."""

    daemon: Daemon
    rundir: Path
    identities: Path
    certs: Path
    tls_port: int
    known: set[str] = field(default_factory=set)

    @property
    def host(self) -> str:
        return self.daemon.host

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def url(self) -> str:
        """The plain listener on loopback (the shipped config keeps it for local programs)."""
        return f"mqtt://{self.daemon.host}:{self.daemon.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://localhost:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"

    def add(self, *agents: str) -> None:
        """Provision the agents not yet known, then reload the broker (SIGHUP) and wait until
        the first of them can log in: what an operator does to add hosts."""
        new = [a for a in dict.fromkeys(agents) if a not in self.known and a not in ROLES]
        if not new:
            return
        provision(self.identities, new)
        self.known.update(new)
        if not self.daemon.alive():
            return  # a stopped broker reads the file when it starts again
        self.daemon.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not self.accepts(new[0]):
            if time.monotonic() > deadline:
                raise DaemonError(f"{self.name} did not take identity {new[0]} after SIGHUP")
            time.sleep(0.02)

    @property
    def name(self) -> str:
        return f"mosquitto in {self.rundir}"

    def accepts(self, identity: str) -> bool:
        """Does the broker take this identity's login now (the plain loopback listener; an edge,
        which has none, overrides it)?"""
        return login_accepted(self.host, self.port, identity, self._read(identity))

    def revoke(self, *agents: str) -> None:
        """What an operator does to take hosts out: clockfleet-identities --revoke, SIGHUP (its
        --reload-pidfile), and --confirm: back once the broker runs the new file, when every
        connected session of these agents has been closed."""
        pidfile = self.rundir / "mosquitto.pid"
        pidfile.write_text(f"{self.daemon.proc.pid}\n")
        revoked = [arg for a in agents for arg in ("--revoke", a)]
        identities_tool(
            self.identities, *revoked, "--yes", "--reload-pidfile", str(pidfile),
            "--confirm", self.url,
        )  # fmt: skip
        self.known.difference_update(agents)

    def _read(self, identity: str) -> str:
        return (self.identities / f"{identity}.password").read_text().strip()

    def password_file(self, identity: str) -> Path:
        self.add(identity)
        return self.identities / f"{identity}.password"

    def password(self, identity: str) -> str:
        return self.password_file(identity).read_text().strip()

    def login(self, identity: str, *, tls: bool = False) -> list[str]:
        """Connection flags for a clockfleet command as this identity."""
        flags = ["--broker", self.tls_url if tls else self.url, "--username", identity]
        flags += ["--password-file", str(self.password_file(identity))]
        return flags + (["--ca-file", str(self.ca_file)] if tls else [])

    def settings(self, identity: str, *, tls: bool = False) -> ConnectionSettings:
        """What a program connecting as this identity uses (its flags, parsed as it would)."""
        return settings_from_args(
            argparse.Namespace(
                broker=self.tls_url if tls else self.url,
                username=identity,
                password_file=str(self.password_file(identity)),
                ca_file=str(self.ca_file) if tls else None,
            )
        )

    def stop(self) -> None:
        self.daemon.stop()

    def kill(self) -> None:
        self.daemon.kill()

    def restart(self) -> None:
        """Start it again with the same config, state and ports (after stop() or kill())."""
        self.daemon = restart(self.daemon)


def start_shipped(
    rundir: Path,
    agents: list[str] | tuple[str, ...] = (),
    *,
    port: int | None = None,
    acl_extra: str = "",
    without: tuple[str, ...] = (),
    why: str = "",
) -> ShippedBroker:
    """broker/mosquitto.conf on free loopback ports, with identities, broker/acl and TLS.

    acl_extra: lines appended to the ACL copy (the edge bridges' generated blocks).
    without: whole lines of the config to leave out, which makes it no longer the shipped
    configuration: `why` must say why (recorded like an open broker's reason)."""
    rundir.mkdir(parents=True, exist_ok=True)
    ids = provision(rundir / "ids", list(agents))
    certs = make_test_ca(rundir / "ca")
    acl = copy_acl(rundir, extra=acl_extra)
    record("mosquitto", shipped=not without, why=why)
    for attempt in range(3):
        # Both ports are chosen together (never the same number); another process may still
        # take one before Mosquitto binds it: then again with fresh ports.
        tls_port, plain_port = stable_ports(2)
        template = production_template(ids / "passwd", certs, tls_port, acl)
        for line in without:
            if f"\n{line}\n" not in template:
                raise AssertionError(f"broker/mosquitto.conf has no line {line!r}")
            template = template.replace(f"\n{line}\n", "\n")
        try:
            d = launch(rundir / "mosquitto", template, port=port or plain_port)
        except DaemonError as exc:
            if attempt == 2 or port is not None or "Address already in use" not in str(exc):
                raise
            continue
        return ShippedBroker(d, rundir, ids, certs, tls_port, set(agents))
    raise AssertionError("unreachable")
