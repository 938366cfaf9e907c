"""A host whose clock is far off gets its list, syncs and reports: `clockfleet agent --once`
as a process, under libfaketime, against the production broker config's TLS listener (whose
certificate is "not yet valid" at a clock 400 days behind) and real chronyd servers."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker, start_shipped
from clockfleet.protocol import signing
from tests.agent.servicekit import PREFIX, list_object, make_keys

DAY = 86400.0


@pytest.fixture
def tls_broker(short_tmp: Path):
    broker = start_shipped(short_tmp / "b", ["acme-01"])
    yield broker
    broker.daemon.stop()


def publish_list(
    broker: ShippedBroker, key: signing.SigningKey, servers: list[tuple[str, int]]
) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    c.username_pw_set("publisher", broker.password("publisher"))
    c.tls_set_context(ssl.create_default_context(cafile=str(broker.certs / "ca.crt")))
    c.connect("localhost", broker.tls_port)
    c.loop_start()
    signed = signing.sign(list_object("r1", 2, servers), key)
    c.publish(f"{PREFIX}/regions/r1/servers", json.dumps(signed), 1, True).wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


def agent_once(
    broker: ShippedBroker, keys, state: Path, faketime: str | None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if faketime is not None:
        lib = devstack.libfaketime_path()
        assert lib is not None, "libfaketime is not installed (Debian package faketime)"
        env.update(LD_PRELOAD=lib, FAKETIME=faketime, FAKETIME_DONT_RESET="1")
    return subprocess.run(
        [
            sys.executable, "-m", "clockfleet", "agent", "--id", "acme-01", "--region", "r1",
            "--once", "--backend", "observe", "--no-timezone", "--log-level", "info",
            "--state-dir", str(state), "--trust-key", str(keys.pub),
            "--broker", broker.tls_url, "--username", "acme-01",
            "--password-file", str(broker.password_file("acme-01")),
            "--ca-file", str(broker.certs / "ca.crt"),
        ],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_a_host_400_days_behind_gets_its_list_over_tls_and_syncs(
    tls_broker: ShippedBroker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    servers = [chrony_server(), chrony_server()]
    publish_list(tls_broker, keys.key, [(s.host, s.port) for s in servers])

    done = agent_once(tls_broker, keys, short_tmp / "state", faketime="-400d")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["offset_s"] == pytest.approx(400 * DAY, abs=5)
    assert "panic limit" in report["note"]
    assert "without its validity dates" in done.stderr


def test_a_first_sync_to_two_servers_2_hours_ahead_reports_ok_with_that_offset(
    tls_broker: ShippedBroker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    servers = [chrony_server(fake_offset_s=7200.0), chrony_server(fake_offset_s=7200.0)]
    publish_list(tls_broker, keys.key, [(s.host, s.port) for s in servers])

    done = agent_once(tls_broker, keys, short_tmp / "state", faketime=None)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], [t["outcome"] for t in report["tried"]]) == (True, ["ok", "ok"])
    assert report["offset_s"] == pytest.approx(7200.0, abs=0.05)


def test_a_host_with_a_right_clock_checks_the_brokers_certificate_dates(
    tls_broker: ShippedBroker, chrony_server, short_tmp: Path
):
    keys = make_keys(short_tmp / "keys")
    server = chrony_server()
    publish_list(tls_broker, keys.key, [(server.host, server.port)])
    done = agent_once(tls_broker, keys, short_tmp / "state", faketime=None)
    assert done.returncode == 0, done.stderr
    assert "validity dates" not in done.stderr


# --- the waiver needs evidence: a right clock never accepts an expired certificate ----------


def leaf_certificate(certs: Path, out: Path, *, expired: bool) -> tuple[Path, Path]:
    """A server certificate for localhost from the fleet's CA (the test CA the broker's own
    certificate comes from): expired a year ago, or valid now."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    start, end = (
        (now - dt.timedelta(days=400), now - dt.timedelta(days=365))
        if expired
        else (now - dt.timedelta(days=1), now + dt.timedelta(days=30))
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "leaf.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "leaf.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return out / "leaf.crt", out / "leaf.key"


class Listener:
    """The man in the middle (a fake: no real broker presents a retired certificate on
    purpose): a TLS listener on loopback that records whatever a client sends it after the
    handshake, such as an MQTT CONNECT with its password."""

    def __init__(self, cert: Path, key: Path) -> None:
        import socket
        import threading

        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(cert), str(key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.handshakes = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    self.handshakes += 1
                    tls.settimeout(2)
                    self.received += tls.recv(4096)
            except (OSError, ssl.SSLError):
                continue

    def close(self) -> None:
        self.sock.close()


def once_at(url: str, broker: ShippedBroker, keys, state: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable, "-m", "clockfleet", "agent", "--id", "acme-01", "--region", "r1",
            "--once", "--backend", "observe", "--no-timezone", "--timeout", "6",
            "--state-dir", str(state), "--trust-key", str(keys.pub), "--broker", url,
            "--username", "acme-01", "--password-file", str(broker.password_file("acme-01")),
            "--ca-file", str(broker.ca_file),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("expired", [True, False], ids=["expired", "valid"])
def test_a_right_clock_never_sends_its_password_past_an_expired_certificate(
    tls_broker: ShippedBroker, short_tmp: Path, expired: bool
):
    """No good sync yet, but the clock reads right: an expired certificate of the fleet's
    own CA is refused before the CONNECT. (With a valid one, the same listener gets the
    password: the listener would see it.)"""
    keys = make_keys(short_tmp / "keys")
    cert, key = leaf_certificate(tls_broker.certs, short_tmp / "mitm", expired=expired)
    mitm = Listener(cert, key)
    try:
        done = once_at(f"mqtts://localhost:{mitm.port}", tls_broker, keys, short_tmp / "state")
    finally:
        mitm.close()
    password = tls_broker.password("acme-01").encode()
    if expired:
        assert password not in mitm.received and mitm.handshakes == 0
        assert "nothing shows this host's clock is wrong" in done.stderr
        assert "without its validity dates" not in done.stderr
    else:
        assert password in mitm.received
