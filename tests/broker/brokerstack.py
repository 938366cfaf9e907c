"""Mosquitto started from the configs in broker/, with identities and a test CA.

The production config (broker/mosquitto.conf) holds real paths and ports. To start it on a
free loopback port, `production_template` replaces exactly these whole lines, each of which
must occur exactly once (so a change to the config that this helper does not follow fails loudly
instead of silently testing something else):

    listener 8883                   -> listener TLS_PORT 127.0.0.1
    listener 1883 127.0.0.1         -> listener @PORT@ @HOST@   (devstack's port)
    password_file /etc/...          -> the identities' passwd file
    acl_file /etc/...               -> a copy of broker/acl in the run directory
    cafile/certfile/keyfile /etc/mosquitto/certs/... -> the test CA's directory
    persistence_location /var/lib/mosquitto/         -> @RUNDIR@/
    log_dest file /var/log/mosquitto/mosquitto.log   -> @RUNDIR@/mosquitto.log

The demo config (broker/mosquitto.demo.conf) is already a devstack template.
Other engineers may use `start_broker` for a broker with real identities and the real ACL.

Mosquitto reads nothing from the checkout itself: a checkout may sit under a directory its
user cannot enter (/root is 0700 on Debian), so the ACL is copied into the run directory.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clockfleet import devstack

REPO = Path(__file__).resolve().parents[2]
BROKER_DIR = REPO / "broker"
IDENTITIES = BROKER_DIR / "clockfleet-identities"
MAKE_TEST_CA = BROKER_DIR / "make-test-ca"
ACL = BROKER_DIR / "acl"


def make_identities(out: Path, agents: list[str]) -> Path:
    subprocess.run([str(IDENTITIES), "--out", str(out), *agents], check=True, capture_output=True)
    return out


def make_test_ca(out: Path) -> Path:
    subprocess.run([str(MAKE_TEST_CA), str(out)], check=True, capture_output=True)
    return out


def copy_acl(rundir: Path) -> Path:
    """broker/acl where Mosquitto can read it, whatever user it runs as."""
    rundir.mkdir(parents=True, exist_ok=True)
    acl = rundir / "acl"
    shutil.copyfile(ACL, acl)
    acl.chmod(0o644)
    return acl


def production_template(passwd: Path, certs: Path, tls_port: int, acl: Path = ACL) -> str:
    text = (BROKER_DIR / "mosquitto.conf").read_text()
    substitutions = {
        "\nlistener 8883\n": f"\nlistener {tls_port} 127.0.0.1\n",
        "\nlistener 1883 127.0.0.1\n": "\nlistener @PORT@ @HOST@\n",
        "\npassword_file /etc/mosquitto/clockfleet/passwd\n": f"\npassword_file {passwd}\n",
        "\nacl_file /etc/mosquitto/clockfleet/acl\n": f"\nacl_file {acl}\n",
        "\ncafile /etc/mosquitto/certs/ca.crt\n": f"\ncafile {certs}/ca.crt\n",
        "\ncertfile /etc/mosquitto/certs/server.crt\n": f"\ncertfile {certs}/server.crt\n",
        "\nkeyfile /etc/mosquitto/certs/server.key\n": f"\nkeyfile {certs}/server.key\n",
        "\npersistence_location /var/lib/mosquitto/\n": "\npersistence_location @RUNDIR@/\n",
        "\nlog_dest file /var/log/mosquitto/mosquitto.log\n": (
            "\nlog_dest file @RUNDIR@/mosquitto.log\n"
        ),
    }
    for old, new in substitutions.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"broker/mosquitto.conf: {old!r} occurs {count} times, not once")
        text = text.replace(old, new)
    return text


@dataclass
class Broker:
    daemon: devstack.Daemon
    identities: Path
    certs: Path | None = None
    tls_port: int | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.daemon.host}:{self.daemon.port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://localhost:{self.tls_port}"

    def password_file(self, identity: str) -> Path:
        return self.identities / f"{identity}.password"

    def password(self, identity: str) -> str:
        return self.password_file(identity).read_text().strip()

    def login(self, identity: str) -> list[str]:
        """Connection flags for a clockfleet command as this identity."""
        return [
            "--broker",
            self.url,
            "--username",
            identity,
            "--password-file",
            str(self.password_file(identity)),
        ]


def start_broker(rundir: Path, agents: list[str], *, production: bool = False) -> Broker:
    """Mosquitto from broker/mosquitto.conf (production: TLS too) or mosquitto.demo.conf."""
    ids = make_identities(rundir / "ids", agents)
    acl = copy_acl(rundir)
    if production:
        certs = make_test_ca(rundir / "ca")
        tls_port = devstack.free_port()
        template = production_template(ids / "passwd", certs, tls_port, acl)
        d = devstack.start_mosquitto(rundir / "mosquitto", conf_template=template)
        return Broker(d, ids, certs, tls_port)
    d = devstack.start_mosquitto(
        rundir / "mosquitto",
        conf_template=(BROKER_DIR / "mosquitto.demo.conf").read_text(),
        values={"PASSWORD_FILE": ids / "passwd", "ACL_FILE": acl},
    )
    return Broker(d, ids)
