"""The client-certificate alternative of the identities figure: per-agent certificates from
the operator's CA, revoked with a CRL that Mosquitto reads again on SIGHUP.

Measured: how long N key pairs and certificates take, and what a revocation does to a
connected agent (Mosquitto 2.0 checks the CRL at the TLS handshake only; on a reload it takes
the user name from each connected client's certificate again, never the CRL).
"""

from __future__ import annotations

import datetime
import ipaddress
import signal
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench import identity_load as load
from clockfleet import devstack

CERT_CONF = """\
per_listener_settings false
allow_anonymous false
listener @PORT@ @HOST@
cafile @RUNDIR@/ca.crt
certfile @RUNDIR@/server.crt
keyfile @RUNDIR@/server.key
require_certificate true
use_identity_as_username true
crlfile @RUNDIR@/crl.pem
log_dest file @RUNDIR@/mosquitto.log
"""
NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Ca:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        constraints = x509.BasicConstraints(ca=True, path_length=None)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name("bench CA"))
            .issuer_name(_name("bench CA"))
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(constraints, critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn: str, serial: int, *, server: bool = False) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for `cn`."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=1))
        )
        if server:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return _pem(builder.sign(self.key, hashes.SHA256())), _key_pem(key)

    def crl(self, revoked: list[int]) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(NOW)
            .next_update(NOW + datetime.timedelta(days=1))
        )
        for serial in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW)
            builder = builder.add_revoked_certificate(entry.build())
        return _pem(builder.sign(self.key, hashes.SHA256()))


def issue_many(n: int) -> float:
    """Seconds for n agent key pairs and certificates (P-256), in memory."""
    ca = Ca()
    t0 = time.monotonic()
    for i in range(n):
        ca.issue(f"agent-{i:05d}", 100 + i)
    return time.monotonic() - t0


def _tls_login(port: int, rundir: Path, who: str) -> socket.socket:
    context = ssl.create_default_context(cafile=str(rundir / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(rundir / f"{who}.crt", rundir / f"{who}.key")
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = context.wrap_socket(raw)
    sock.sendall(load.connect_packet(who, "unused"))
    kind, body = load.read_packet(sock)
    if kind != 0x20 or body[1:2] != b"\x00":
        raise devstack.DaemonError(f"{who}: CONNACK {body!r}")
    return sock


def crl_revocation(rundir: Path, wait_s: float = 5.0) -> tuple[bool, bool]:
    """(was the connected agent disconnected within wait_s of CRL + SIGHUP, was its next
    login refused)."""
    ca = Ca()
    files = {"ca.crt": _pem(ca.cert), "crl.pem": ca.crl([])}
    files["server.crt"], files["server.key"] = ca.issue("server", 2, server=True)
    files["agent.crt"], files["agent.key"] = ca.issue("agent", 7)
    rundir.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (rundir / name).write_bytes(data)
    d = devstack.start_open_mosquitto(
        rundir, why="benchmark: client certificates and a CRL, the identities figure's "
        "alternative (no anonymous client: every one needs a certificate)",
        conf_template=CERT_CONF,
    )  # fmt: skip
    try:
        sock = _tls_login(d.port, rundir, "agent")
        (rundir / "crl.pem").write_bytes(ca.crl([7]))
        d.proc.send_signal(signal.SIGHUP)
        closed = load.wait_closed(sock, wait_s) is not None
        sock.close()
        try:
            _tls_login(d.port, rundir, "agent").close()
            refused = False
        except (OSError, devstack.DaemonError):
            refused = True
        return closed, refused
    finally:
        d.stop()
