"""compose.yaml's setup script, run here for real (as root, for its chown calls) with its
volumes under a temporary root: every identity made and handed out, only to its service; run
again, no file rewritten; CLOCKFLEET_BROKER_NAMES in the broker's certificate.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.compose.composekit import (
    COMPOSE,
    argv_value,
    clockfleet_commands,
    compose_config,
    services,
)
from tests.helpers import REPO

SETUP_MOUNTS = (
    "/broker-acl",
    "/identities",
    "/broker-auth",
    "/ca",
    "/certs",
    "/signing",
    "/trust",
    "/secrets",
    "/mosquitto-data",
    "/mosquitto-log",
)


def _setup_script_under(compose: dict, root: Path) -> str:
    """The setup service's script as the container runs it (Compose turns $$ into $), with
    its mount points moved under `root`."""
    script = "\n".join(str(w) for w in services(compose)["setup"]["command"])
    script = script.replace("$$", "$")
    for mount in sorted(SETUP_MOUNTS, key=len, reverse=True):
        script = re.sub(rf"(?<![\w/.-]){re.escape(mount)}(?=[/\s]|$)", str(root) + mount, script)
    return script


class Setup:
    """The setup service's volumes under a temporary root, and its script run there."""

    def __init__(self, compose: dict, root: Path):
        self.root = root
        self.script = _setup_script_under(compose, root)
        for vol in services(compose)["setup"]["volumes"]:
            target = vol.split(":")[1]
            if target != "/broker-acl":
                (root / target.lstrip("/")).mkdir(parents=True)
        shutil.copy(REPO / "broker/acl", root / "broker-acl")
        bindir = root / "bin"
        bindir.mkdir()
        (bindir / "clockfleet-identities").symlink_to(REPO / "broker/clockfleet-identities")
        (bindir / "clockfleet").symlink_to(Path(sys.executable).parent / "clockfleet")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOCKFLEET_")}
        self.env = {**env, "PATH": f"{bindir}:{os.environ['PATH']}"}

    def run(self, broker_names: str | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if broker_names is not None:
            env["CLOCKFLEET_BROKER_NAMES"] = broker_names
        # It needs root for its chown calls, as in the container.
        return subprocess.run(
            ["/bin/sh", "-ec", self.script], capture_output=True, text=True, env=env, timeout=60
        )

    def snapshot(self) -> dict[str, tuple[int, int, int, int, str]]:
        """Every file in the volumes: inode, mtime, owner, mode and content hash."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_symlink() and "bin" not in path.parts[-2:-1]:
                st = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[str(path.relative_to(self.root))] = (
                    st.st_ino,
                    st.st_mtime_ns,
                    st.st_uid,
                    st.st_mode,
                    digest,
                )
        return out

    def san(self) -> set[str]:
        done = subprocess.run(
            ["openssl", "x509", "-in", str(self.root / "certs/server.crt"), "-noout", "-ext",
             "subjectAltName"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        names = done.stdout.split("\n", 1)[1]
        return {n.strip().replace("IP Address:", "IP:") for n in names.split(",")}

    def chain_verifies(self) -> bool:
        ca, server = str(self.root / "trust/ca.crt"), str(self.root / "certs/server.crt")
        done = subprocess.run(["openssl", "verify", "-CAfile", ca, server], capture_output=True)
        return done.returncode == 0


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the setup script chowns (root)")


@pytest.fixture(scope="module")
def setup_twice(compose: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Setup, dict]:
    """Setup run once (a new stack) and again (every later `up`): (the setup, the files as
    the first run left them)."""
    if shutil.which("openssl") is None or os.geteuid() != 0:
        pytest.skip("the setup script needs openssl and root (chown)")
    s = Setup(compose, tmp_path_factory.mktemp("setup"))
    first = s.run()
    assert first.returncode == 0, first.stderr
    before = s.snapshot()
    again = s.run()
    assert again.returncode == 0, again.stderr
    return s, before


def test_setup_run_again_rewrites_no_file_a_running_service_reads(setup_twice):
    s, before = setup_twice
    assert s.snapshot() == before


def test_setup_makes_an_identity_for_every_user_a_service_logs_in_as(compose: dict, setup_twice):
    s, _ = setup_twice
    users = {argv_value(a, "--username") for _, a in clockfleet_commands(compose)} - {None}
    assert users >= {"publisher", "collector", "operator", "pbx-sample-1", "pbx-sample-2"}
    assert {u for u in users if not (s.root / f"identities/{u}.password").is_file()} == set()


def test_setup_hands_each_service_its_identitys_password_readable_by_clockfleet_only(
    compose: dict, setup_twice
):
    s, _ = setup_twice
    users = {argv_value(a, "--username") for _, a in clockfleet_commands(compose)} - {None}
    for who in users:
        secret = s.root / "secrets" / who / "password"
        assert secret.stat().st_uid == 10001 and secret.stat().st_mode & 0o077 == 0, who
        assert secret.read_text() == (s.root / "identities" / f"{who}.password").read_text()


def test_setup_gives_the_broker_its_password_file_and_acl_only(setup_twice):
    s, _ = setup_twice
    assert sorted(p.name for p in (s.root / "broker-auth").iterdir()) == ["acl", "passwd"]
    assert (s.root / "broker-auth/passwd").stat().st_uid == 1883
    assert (s.root / "broker-auth/passwd").stat().st_mode & 0o077 == 0
    assert (s.root / "broker-auth/acl").read_text() == (REPO / "broker/acl").read_text()


def test_setup_gives_the_broker_its_certificate_key_and_ca_and_keeps_the_signing_key(
    setup_twice,
):
    s, _ = setup_twice
    # The broker's certificate, its key, and the CA that mosquitto.conf's `cafile` names.
    certs = sorted(p.name for p in (s.root / "certs").iterdir())
    assert certs == ["ca.crt", "server.crt", "server.key"]
    assert (s.root / "certs/server.key").stat().st_uid == 1883
    assert (s.root / "trust/ops-2026.pub").is_file() and (s.root / "trust/ca.crt").is_file()
    assert not (s.root / "trust/ops-2026.key").exists()
    assert s.chain_verifies()


def test_broker_certificate_names_the_service_localhost_and_loopback_by_default(setup_twice):
    s, _ = setup_twice
    assert s.san() == {"DNS:mosquitto", "DNS:localhost", "IP:127.0.0.1"}


@needs_openssl
@needs_root
def test_setup_adds_clockfleet_broker_names_to_the_broker_certificate(
    compose: dict, short_tmp: Path
):
    s = Setup(compose, short_tmp)
    done = s.run("broker.example.net, 192.0.2.7,2001:db8::7")
    assert done.returncode == 0, done.stderr
    assert s.san() == {
        "DNS:mosquitto",
        "DNS:localhost",
        "IP:127.0.0.1",
        "DNS:broker.example.net",
        "IP:192.0.2.7",
        "IP:2001:DB8:0:0:0:0:0:7",
    }
    assert s.chain_verifies()


@needs_openssl
@needs_root
def test_new_broker_names_get_a_new_certificate_from_the_same_ca_and_key(
    compose: dict, short_tmp: Path
):
    s = Setup(compose, short_tmp)
    assert s.run("broker.example.net").returncode == 0
    before = s.snapshot()
    done = s.run("broker.example.net,192.0.2.7")
    assert done.returncode == 0, done.stderr
    after = s.snapshot()
    changed = {path for path in after if after[path] != before.get(path)}
    assert changed == {"certs/server.crt", "ca/server.san"}
    assert "IP:192.0.2.7" in s.san() and s.chain_verifies()
    assert "restart mosquitto" in done.stdout


@needs_openssl
@needs_root
def test_setup_refuses_a_broker_name_that_is_neither_a_dns_name_nor_an_address(
    compose: dict, short_tmp: Path
):
    s = Setup(compose, short_tmp)
    done = s.run("broker.example.net,bad;name")
    assert done.returncode != 0
    assert "CLOCKFLEET_BROKER_NAMES: 'bad;name'" in done.stderr
    assert not (s.root / "certs/server.crt").exists()


def test_compose_hands_clockfleet_broker_names_to_setup():
    model = compose_config("compose.yaml", env={"CLOCKFLEET_BROKER_NAMES": "b.example.net"})
    assert model["services"]["setup"]["environment"]["CLOCKFLEET_BROKER_NAMES"] == "b.example.net"


def test_clockfleet_broker_names_is_documented_for_operators():
    header = "".join(ln for ln in COMPOSE.read_text().splitlines(True) if ln.startswith("#"))
    assert "CLOCKFLEET_BROKER_NAMES" in header
    assert "CLOCKFLEET_BROKER_NAMES" in (REPO / "docs/compose.md").read_text()
