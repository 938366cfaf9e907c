"""broker/clockfleet-identities and broker/make-test-ca, as the demo and operators run them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.broker.brokerstack import IDENTITIES, MAKE_TEST_CA


def identities(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(IDENTITIES), "--out", str(out), *args], capture_output=True, text=True, timeout=60
    )


def users(passwd: Path) -> list[str]:
    return [line.split(":", 1)[0] for line in passwd.read_text().splitlines()]


def test_identities_writes_roles_and_agents_with_private_password_files(tmp_path: Path):
    result = identities(tmp_path, "acme-01", "acme-02")
    assert result.returncode == 0, result.stderr
    assert users(tmp_path / "passwd") == [
        "publisher",
        "collector",
        "operator",
        "acme-01",
        "acme-02",
    ]
    for name in ("passwd", "publisher.password", "acme-01.password"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    # Hashed, never the clear password.
    password = (tmp_path / "acme-01.password").read_text().strip()
    assert len(password) >= 24 and password not in (tmp_path / "passwd").read_text()


def test_identities_refresh_keeps_existing_passwords(tmp_path: Path):
    identities(tmp_path, "acme-01")
    before = (tmp_path / "acme-01.password").read_text()
    result = identities(tmp_path, "acme-01", "acme-03")
    assert result.returncode == 0
    assert (tmp_path / "acme-01.password").read_text() == before
    assert "1 new, 4 kept" in result.stdout


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
