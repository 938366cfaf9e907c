"""broker/clockfleet-identities and broker/make-test-ca, as the demo and operators run them."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from clockfleet import devstack
from clockfleet.devstack.mosquitto import BROKER_DIR, IDENTITIES_TOOL, MAKE_TEST_CA, copy_acl
from tests.broker.mqttclient import connect


def identities(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(IDENTITIES_TOOL), "--out", str(out), *args], capture_output=True, text=True, timeout=60
    )


def users(passwd: Path) -> list[str]:
    return [line.split(":", 1)[0] for line in passwd.read_text().splitlines()]


def test_identities_writes_roles_and_agents_with_private_password_files(tmp_path: Path):
    result = identities(tmp_path, "acme-01", "acme-02")
    assert result.returncode == 0, result.stderr
    assert users(tmp_path / "passwd") == [
        "publisher",
        "collector",
        "collector-2",
        "operator",
        "acme-01",
        "acme-02",
    ]
    for name in ("passwd", "publisher.password", "acme-01.password"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert tmp_path.stat().st_mode & 0o777 == 0o711  # openable by name, not listable
    # Hashed, never the clear password.
    password = (tmp_path / "acme-01.password").read_text().strip()
    assert len(password) >= 24 and password not in (tmp_path / "passwd").read_text()


def test_identities_refresh_keeps_existing_passwords(tmp_path: Path):
    identities(tmp_path, "acme-01")
    before = (tmp_path / "acme-01.password").read_text()
    result = identities(tmp_path, "acme-01", "acme-03")
    assert result.returncode == 0
    assert (tmp_path / "acme-01.password").read_text() == before
    assert "1 new, 5 kept" in result.stdout


def test_identities_rotate_gives_a_new_password(tmp_path: Path):
    identities(tmp_path, "acme-01")
    before = (tmp_path / "acme-01.password").read_text()
    assert identities(tmp_path, "acme-01", "--rotate", "acme-01").returncode == 0
    assert (tmp_path / "acme-01.password").read_text() != before


def test_identities_drops_agents_no_longer_listed(tmp_path: Path):
    identities(tmp_path, "acme-01", "acme-02")
    agents_file = tmp_path / "agents.txt"
    agents_file.write_text("# hosts still in service\nacme-02\n")
    assert identities(tmp_path, "--agents-file", str(agents_file)).returncode == 0
    assert "acme-01" not in users(tmp_path / "passwd")
    assert not (tmp_path / "acme-01.password").exists()


def test_identities_refuses_an_agent_named_like_a_role(tmp_path: Path):
    result = identities(tmp_path, "publisher")
    assert result.returncode == 2
    assert "is a role name" in result.stderr
    assert not (tmp_path / "passwd").exists()


def test_identities_refuses_an_agent_id_the_contract_forbids(tmp_path: Path):
    result = identities(tmp_path, "acme.01")
    assert result.returncode == 2
    assert "invalid agent id 'acme.01'" in result.stderr


def test_make_test_ca_writes_a_server_certificate_for_localhost(tmp_path: Path):
    result = subprocess.run(
        [str(MAKE_TEST_CA), str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "server.crt")],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    text = subprocess.run(
        [
            "openssl",
            "x509",
            "-in",
            str(tmp_path / "server.crt"),
            "-noout",
            "-ext",
            "subjectAltName",
        ],
        capture_output=True,
        text=True,
    ).stdout
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to let Mosquitto drop to its user")
def test_mosquitto_reads_the_identities_after_dropping_root(short_tmp: Path):
    """Mosquitto opens password_file and acl_file as user mosquitto: the layout must allow
    that, wherever the checkout is (under /root, mode 0700, it cannot enter the checkout)."""
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user")
    os.chmod(short_tmp, 0o711)
    ids = short_tmp / "ids"
    assert identities(ids, "acme-01", "--passwd-owner", "mosquitto").returncode == 0
    rundir = short_tmp / "mosquitto"
    rundir.mkdir()
    shutil.chown(rundir, "mosquitto")
    acl = copy_acl(short_tmp)
    template = (BROKER_DIR / "mosquitto.demo.conf").read_text() + "user mosquitto\n"
    d = devstack.start_mosquitto(
        rundir, conf_template=template, values={"PASSWORD_FILE": ids / "passwd", "ACL_FILE": acl}
    )
    try:
        c = connect(d.port, "acme-01", (ids / "acme-01.password").read_text().strip())
        c.close()
    finally:
        d.stop()
