"""broker/clockfleet-identities and broker/make-test-ca, as the demo and operators run them."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clockfleet.devstack import free_port
from clockfleet.devstack.mosquitto import (
    IDENTITIES_TOOL,
    MAKE_TEST_CA,
    ROLES,
    ShippedBroker,
    copy_acl,
    launch,
    login_accepted,
    make_test_ca,
    production_template,
    record,
)
from tests.broker.mqttclient import connect
from tests.helpers import wait_until


def identities(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(IDENTITIES_TOOL), "--out", str(out), *args], capture_output=True, text=True, timeout=60
    )


def users(passwd: Path) -> list[str]:
    return [line.split(":", 1)[0] for line in passwd.read_text().splitlines()]


def hashes(passwd: Path) -> dict[str, str]:
    return dict(line.split(":", 1) for line in passwd.read_text().splitlines())


def test_identities_writes_roles_and_agents_with_private_password_files(tmp_path: Path):
    result = identities(tmp_path, "acme-01", "acme-02")
    assert result.returncode == 0, result.stderr
    assert users(tmp_path / "passwd") == [
        "publisher",
        "collector",
        "collector-2",
        "operator",
        "retire",
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
    assert "1 new, 6 kept" in result.stdout


def test_identities_rotate_gives_a_new_password(tmp_path: Path):
    identities(tmp_path, "acme-01")
    before = (tmp_path / "acme-01.password").read_text()
    assert identities(tmp_path, "acme-01", "--rotate", "acme-01").returncode == 0
    assert (tmp_path / "acme-01.password").read_text() != before


def test_adding_one_agent_after_a_first_run_keeps_every_identity_able_to_log_in(
    broker: ShippedBroker,
):
    """The natural way to add a host: `--out DIR new-03`, then a reload (SIGHUP)."""
    first = identities(broker.identities, "acme-01", "acme-02")
    assert first.returncode == 0, first.stderr
    broker.daemon.proc.send_signal(signal.SIGHUP)
    before = {i: broker.password(i) for i in ("acme-01", "acme-02", "publisher", "operator")}

    added = identities(broker.identities, "new-03")
    broker.daemon.proc.send_signal(signal.SIGHUP)

    assert added.returncode == 0, added.stderr
    assert "+ new-03" in added.stdout and "- " not in added.stdout
    wait_until(
        lambda: login_accepted(broker.host, broker.port, "new-03", broker.password("new-03"))
    )
    for ident, password in before.items():
        assert broker.password(ident) == password
        assert login_accepted(broker.host, broker.port, ident, password), ident


def test_revoke_takes_out_only_the_named_agent(tmp_path: Path):
    identities(tmp_path, "acme-01", "acme-02")
    result = identities(tmp_path, "--revoke", "acme-01")
    assert result.returncode == 0, result.stderr
    assert "- acme-01" in result.stdout
    assert "acme-01" not in users(tmp_path / "passwd")
    assert not (tmp_path / "acme-01.password").exists()
    assert "acme-02" in users(tmp_path / "passwd")


def test_sync_to_an_inventory_shows_and_removes_the_agents_it_no_longer_lists(tmp_path: Path):
    identities(tmp_path, "acme-01", "acme-02")
    agents_file = tmp_path / "agents.txt"
    agents_file.write_text("# hosts still in service\nacme-02\nacme-03\n")
    result = identities(tmp_path, "--sync", "--agents-file", str(agents_file))
    assert result.returncode == 0, result.stderr
    assert "+ acme-03" in result.stdout and "- acme-01" in result.stdout
    assert users(tmp_path / "passwd")[len(ROLES) :] == ["acme-02", "acme-03"]


def test_a_dry_run_shows_the_change_and_writes_nothing(tmp_path: Path):
    identities(tmp_path, "acme-01", "acme-02")
    before = (tmp_path / "passwd").read_bytes()
    result = identities(tmp_path, "--sync", "acme-02", "acme-04", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:2] == ["+ acme-04", "- acme-01"]
    assert "nothing written" in result.stdout
    assert (tmp_path / "passwd").read_bytes() == before
    assert (tmp_path / "acme-01.password").exists()
    assert not (tmp_path / "acme-04.password").exists()


def test_revoking_more_agents_than_the_bound_needs_confirmation(tmp_path: Path):
    fleet = [f"pbx-{n:02d}" for n in range(8)]
    identities(tmp_path, *fleet)
    truncated = identities(tmp_path, "--sync", "pbx-00")  # an inventory cut short
    assert truncated.returncode == 2
    assert "would revoke 7 agents" in truncated.stderr and "--yes" in truncated.stderr
    assert users(tmp_path / "passwd")[len(ROLES) :] == fleet
    confirmed = identities(tmp_path, "--sync", "pbx-00", "--yes")
    assert confirmed.returncode == 0, confirmed.stderr
    assert users(tmp_path / "passwd")[len(ROLES) :] == ["pbx-00"]


def test_revoking_an_agent_that_does_not_exist_is_refused(tmp_path: Path):
    identities(tmp_path, "acme-01")
    result = identities(tmp_path, "--remove", "acme-09")  # the old name of --revoke
    assert result.returncode == 2
    assert "no such agent" in result.stderr


@pytest.mark.parametrize("role", ROLES)
def test_identities_refuses_an_agent_named_like_a_role(tmp_path: Path, role: str):
    result = identities(tmp_path, role)
    assert result.returncode == 2
    assert "is a role name" in result.stderr
    assert not (tmp_path / "passwd").exists()


def test_identities_refuses_an_agent_id_the_contract_forbids(tmp_path: Path):
    result = identities(tmp_path, "acme.01")
    assert result.returncode == 2
    assert "invalid agent id 'acme.01'" in result.stderr


# --- No secret stays with the hashes ------------------------------------------------------


def test_secrets_go_only_where_asked_and_the_hashes_hold_none(tmp_path: Path):
    """The broker's directory (passwd) holds hashes; each secret is written once, to the
    deployment's side (--secrets), in a form Mosquitto checks with one PBKDF2 round."""
    ids, handout = tmp_path / "broker", tmp_path / "handout"
    result = identities(ids, "acme-01", "--secrets", str(handout))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in ids.iterdir()) == [".lock", "passwd"]
    assert sorted(p.name for p in handout.iterdir()) == sorted(
        f"{n}.password" for n in (*ROLES, "acme-01")
    )
    secret = (handout / "acme-01.password").read_text().strip()
    assert secret not in (ids / "passwd").read_text()
    assert all(h.startswith("$7$1$") for h in hashes(ids / "passwd").values())


def test_secrets_on_standard_output_leave_no_file(tmp_path: Path):
    result = identities(tmp_path, "acme-01", "--secrets", "-")
    assert result.returncode == 0, result.stderr
    printed = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert sorted(printed) == sorted((*ROLES, "acme-01"))
    assert all(len(secret) == 32 for secret in printed.values())
    assert not list(tmp_path.glob("*.password"))
    assert "+ acme-01" in result.stderr  # the messages, out of the way of the secrets


def test_deleted_secret_files_change_nothing_on_the_next_run(tmp_path: Path):
    """The old tool re-hashed every secret from its file on every run, so the files had to
    stay on the broker host; this one keeps the hashes it has."""
    identities(tmp_path, "acme-01")
    before = hashes(tmp_path / "passwd")
    for secret in tmp_path.glob("*.password"):
        secret.unlink()
    result = identities(tmp_path, "acme-02")
    assert result.returncode == 0, result.stderr
    after = hashes(tmp_path / "passwd")
    assert {n: after[n] for n in before} == before
    assert [p.name for p in tmp_path.glob("*.password")] == ["acme-02.password"]


def identities_bcrypt(out: Path, *args: str) -> subprocess.CompletedProcess:
    """The tool with this interpreter, which has bcrypt (`make test` installs it in .venv;
    a broker host has python3-bcrypt): `env python3` here may be one without it."""
    result = subprocess.run(
        [sys.executable, str(IDENTITIES_TOOL), "--out", str(out), *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def test_nats_hashes_are_kept_beside_the_mosquitto_ones_and_follow_every_change(tmp_path: Path):
    identities_bcrypt(tmp_path, "acme-01", "acme-02", "--nats")
    identities_bcrypt(tmp_path, "--revoke", "acme-02")
    # without --nats: the file exists, so it is kept up to date
    identities_bcrypt(tmp_path, "acme-03")
    nats = hashes(tmp_path / "nats-users")
    assert list(nats) == [*ROLES, "acme-01", "acme-03"]
    assert all(h.startswith("$2b$04$") for h in nats.values())


def test_nats_hashes_cannot_be_added_later_without_new_secrets(tmp_path: Path):
    identities(tmp_path, "acme-01")
    result = identities(tmp_path, "--nats")
    assert result.returncode == 2
    assert "no NATS hash for publisher (its secret is not kept): --rotate it" in result.stderr
    assert not (tmp_path / "nats-users").exists()


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
    """Mosquitto opens password_file, acl_file and its TLS key as user mosquitto: the layout
    must allow that, wherever the checkout is (under /root, mode 0700, it cannot enter the
    checkout). The shipped config as is, with `user mosquitto` as on a real host."""
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user")
    os.chmod(short_tmp, 0o711)
    ids = short_tmp / "ids"
    assert identities(ids, "acme-01", "--passwd-owner", "mosquitto").returncode == 0
    certs = make_test_ca(short_tmp / "ca")
    os.chmod(certs, 0o755)
    shutil.chown(certs / "server.key", "mosquitto")
    rundir = short_tmp / "mosquitto"
    rundir.mkdir()
    shutil.chown(rundir, "mosquitto")
    acl = copy_acl(short_tmp)
    template = production_template(ids / "passwd", certs, free_port(), acl) + "user mosquitto\n"
    record("mosquitto", shipped=True)
    d = launch(rundir, template)
    try:
        c = connect(d.port, "acme-01", (ids / "acme-01.password").read_text().strip())
        c.close()
    finally:
        d.stop()
