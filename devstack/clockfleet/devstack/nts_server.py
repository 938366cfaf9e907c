"""An NTS server on loopback for the tests and benchmarks: chronyd with a test CA's certificate.

    pki = make_test_pki(dir)                       # a CA and a server certificate for it
    server = start_nts_server(rundir, pki)         # chronyd -x: NTS-KE on TCP, NTP on UDP

chronyd (4.0 and later, built with +NTS) serves NTS-KE on `ntsport` with `ntsserverkey` /
`ntsservercert`, and NTS-authenticated NTP on its `port`; it sends the NTP port in its NTS-KE
answer when it is not 123. As every chronyd here, it runs with -x: it never touches this
machine's clock. The certificates are made with `cryptography` (the test extra has it):
an EC P-256 CA and a server certificate naming `localhost` and 127.0.0.1, valid for a day
unless a test asks for dates or names that make it fail.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from clockfleet.devstack.daemons import (
    Daemon,
    DaemonError,
    free_port,
    free_udp_port,
    is_root,
    ntp_query,
    require,
    wait_tcp,
)

DAY = dt.timedelta(days=1)


@dataclass(frozen=True)
class NtsPki:
    """Paths of a test CA and the server certificate and key it signed (PEM)."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path


@dataclass
class NtsServer:
    daemon: Daemon
    address: str
    ntp_port: int
    ke_port: int
    pki: NtsPki

    def stop(self) -> None:
        self.daemon.stop()


def make_test_pki(
    directory: Path,
    *,
    names: tuple[str, ...] = ("localhost", "127.0.0.1", "127.0.0.2", "::1"),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ca_name: str = "clockfleet test CA",
) -> NtsPki:
    """A CA and a server certificate for `names` (DNS names or IP literals) in `directory`.
    The server certificate is valid from `not_before` to `not_after` (default: an hour ago to
    a day ahead); the CA for ten years around now."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_subject)
        .issuer_name(ca_subject)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - 3650 * DAY)
        .not_valid_after(now + 3650 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(hours=1))
        .not_valid_after(not_after or now + DAY)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    raw_key = {
        "encoding": pem,
        "format": serialization.PrivateFormat.PKCS8,
        "encryption_algorithm": serialization.NoEncryption(),
    }
    pki = NtsPki(
        directory / "ca.crt", directory / "ca.key", directory / "srv.crt", directory / "srv.key"
    )
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    pki.ca_key.write_bytes(ca_key.private_bytes(**raw_key))  # type: ignore[arg-type]
    pki.cert.write_bytes(cert.public_bytes(pem))
    pki.key.write_bytes(key.private_bytes(**raw_key))  # type: ignore[arg-type]
    for secret in (pki.ca_key, pki.key):
        os.chmod(secret, 0o600)
    return pki


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def nts_server_conf(
    rundir: Path,
    pki: NtsPki,
    address: str,
    ntp_port: int,
    ke_port: int,
    ntp_server: str | None = None,
) -> str:
    """chronyd's configuration for an NTS server on address (never a client of anything).
    `ntp_server`: the NTP server its NTS-KE answers name (chrony's `ntsntpserver`), e.g. a
    relay's address; the port it names is always its own."""
    extra = [f"ntsntpserver {ntp_server}"] if ntp_server else []
    return "\n".join(
        [
            *extra,
            f"port {ntp_port}",
            f"bindaddress {address}",
            "allow 127.0.0.0/8",
            "allow ::1",
            "cmdport 0",
            "local stratum 8",
            f"ntsport {ke_port}",
            f"ntsserverkey {pki.key}",
            f"ntsservercert {pki.cert}",
            f"ntsdumpdir {rundir}/nts",
            f"bindcmdaddress {rundir}/chronyd.sock",
            f"pidfile {rundir}/chronyd.pid",
            f"driftfile {rundir}/chronyd.drift",
            "",
        ]
    )


def start_nts_server(
    rundir: Path,
    pki: NtsPki,
    *,
    address: str = "127.0.0.1",
    ntp_port: int | None = None,
    ke_port: int | None = None,
    ntp_server: str | None = None,
    timeout: float = 10.0,
) -> NtsServer:
    """chronyd serving NTS-KE on TCP address:ke_port and NTP on UDP address:ntp_port (-x);
    its NTS-KE answers name `ntp_server` as the NTP server when given."""
    binary = require("chronyd")
    rundir.mkdir(parents=True, exist_ok=True)
    os.chmod(rundir, 0o700)
    (rundir / "nts").mkdir(mode=0o700, exist_ok=True)
    ntp_port = ntp_port or free_udp_port(address)
    ke_port = ke_port or free_port(address)
    conf = rundir / "chronyd.conf"
    conf.write_text(nts_server_conf(rundir, pki, address, ntp_port, ke_port, ntp_server))
    args = [binary, "-x", "-d", "-f", str(conf)]
    if is_root():
        args += ["-u", "root"]
    log = rundir / "chronyd.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    daemon = Daemon("chronyd-nts", proc, log, ntp_port, address, {"conf": conf})
    server = NtsServer(daemon, address, ntp_port, ke_port, pki)
    try:
        deadline = time.monotonic() + timeout
        if wait_tcp(address, ke_port, proc, timeout):
            while time.monotonic() < deadline and proc.poll() is None:
                if ntp_query(address, ntp_port, 0.1) is not None:
                    return server
    except BaseException:
        daemon.stop()  # never leave an orphaned daemon, whatever went wrong while waiting
        raise
    daemon.stop()
    raise DaemonError(f"chronyd (NTS) did not serve on {address}:{ke_port}: {daemon.log_tail()}")
