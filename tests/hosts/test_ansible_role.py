"""The Ansible role (deploy/ansible, issue 21 part 2) against Debian 11, 12 and 13 hosts under
systemd: `ansible-playbook` of the shipped site.yml, as an operator runs it, installs the
package from the signed repository, writes each host's agent.yaml and secret and starts the
agent, and every host reports; a second run changes nothing (and restarts no agent). These
hosts run the chrony backend, so the last test shows the agent seeing, from its sandbox, a
second time daemon beside chronyd.

ansible-playbook logs in over SSH, as it does to a PBX: each container runs its own sshd on a
loopback port of its own (the images carry openssh-server, off), with a key made for the
session; the repository is served on 127.0.0.1 (conftest.apt_archive). The inventory is the
test's: what an operator's inventory.yml holds, with the stack's broker, CA and trust key.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.hosts import aptkit, hostkit
from tests.hosts.stack import Stack

pytestmark = pytest.mark.slow

ANSIBLE = hostkit.REPO / "deploy" / "ansible"
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@dataclass
class Fleet:
    hosts: dict[str, hostkit.SystemdHost]  # by agent id = inventory name
    inventory: Path
    work: Path

    def play(self) -> tuple[str, dict[str, tuple[int, ...]]]:
        """ansible-playbook site.yml: its output and each host's recap (ok, changed,
        unreachable, failed)."""
        env = {
            **os.environ,
            "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_LOCAL_TEMP": str(self.work / "tmp"),
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.work / "cp"),
            "ANSIBLE_FORKS": "3",
        }
        argv = [str(PLAYBOOK), "-i", str(self.inventory), str(ANSIBLE / "site.yml")]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
        recap = {m[0]: tuple(int(x) for x in m[1:]) for m in RECAP.findall(r.stdout)}
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        return r.stdout, recap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sshd(host: hostkit.SystemdHost, port: int, public_key: str) -> None:
    """sshd on 127.0.0.1:port only, root by key only, as a transient unit."""
    host.ok("mkdir -p -m 0755 /run/sshd && mkdir -p -m 0700 /root/.ssh")
    host.put("/root/.ssh/authorized_keys", public_key, 0o600)
    options = "-o ListenAddress=127.0.0.1 -o PermitRootLogin=prohibit-password"
    options += " -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o UsePAM=no"
    host.ok(f"systemd-run --unit=clockfleet-test-sshd /usr/sbin/sshd -D -p {port} {options}")

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    hostkit.wait_for(listening, 15, f"sshd on port {port}")


def inventory(stack: Stack, repo: aptkit.Repo, ports: dict[str, int], key: Path) -> dict:
    """What an operator's inventory.yml holds (deploy/ansible/inventory.example.yml)."""
    hosts = {}
    for agent_id, port in ports.items():
        stack.add_agent(agent_id)
        hosts[agent_id] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": port,
            "clockfleet_region": "hosts",
            "clockfleet_password": stack.broker.password(agent_id),
        }
    return {
        "pbx": {
            "vars": {
                "ansible_user": "root",
                "ansible_become": False,  # logged in as root: no sudo on these hosts
                "ansible_ssh_private_key_file": str(key),
                "ansible_python_interpreter": "/usr/bin/python3",
                "clockfleet_apt_url": repo.url,
                "clockfleet_apt_key": repo.key_asc,
                "clockfleet_broker": stack.url,
                "clockfleet_ca_pem": stack.broker.ca_file.read_text(),
                "clockfleet_trust_keys": {"ops-hosts": stack.pub.read_text()},
                "clockfleet_backend": "chrony",
                # The RFC 4330 start-up delay and the backoffs would only make the test wait.
                "clockfleet_agent_settings": {
                    "startup_delay_s": 0,
                    "resync_jitter_s": 0,
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 1,
                },
            },
            "hosts": hosts,
        }
    }


@pytest.fixture(scope="module")
def fleet(images, debs, stack, apt_archive, tmp_path_factory) -> Iterator[Fleet]:
    if not PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not installed: the test extra brings ansible-core")
    work = tmp_path_factory.mktemp("ansible")
    (work / "tmp").mkdir()
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    repo = apt_archive.repo("ansible")
    repo.publish(*(debs(suite) for suite in hostkit.SUITES))
    hosts: dict[str, hostkit.SystemdHost] = {}
    ports: dict[str, int] = {}
    try:
        for suite in hostkit.SUITES:
            host = hostkit.SystemdHost(images(suite), suite).start()
            agent_id = f"pbx-{suite}-ansible"
            hosts[agent_id] = host
            aptkit.offline_apt(host)
            ports[agent_id] = free_port()
            start_sshd(host, ports[agent_id], key.with_suffix(".pub").read_text())
        path = work / "inventory.yml"
        path.write_text(yaml.safe_dump(inventory(stack, repo, ports, key), sort_keys=False))
        yield Fleet(hosts, path, work)
    finally:
        for host in hosts.values():
            host.stop()


def test_ansible_playbook_installs_and_starts_the_agent_and_every_host_reports(fleet, stack):
    _, recap = fleet.play()

    assert set(recap) == set(fleet.hosts)
    assert all(failed == unreachable == 0 for _, _, unreachable, failed in recap.values())
    for agent_id, host in fleet.hosts.items():
        report = stack.wait_report(agent_id, lambda r: r["ok"], timeout_s=40, host=host)
        assert report["discipline"] == "chrony"
        assert report["software"] == aptkit.upstream_version()
        assert report["time_setters"] == []  # these images carry no other time setter
        assert host.ok("stat -c '%U %G %a' /etc/clockfleet/mqtt-password").strip() == (
            "root clockfleet 640"
        )


def test_a_second_run_of_the_playbook_changes_nothing(fleet, stack):
    for agent_id, host in fleet.hosts.items():
        stack.wait_report(agent_id, lambda r: r["ok"], timeout_s=40, host=host)
    cursors = {agent_id: aptkit.journal_cursor(host) for agent_id, host in fleet.hosts.items()}

    out, recap = fleet.play()

    assert {agent_id: r[1] for agent_id, r in recap.items()} == dict.fromkeys(fleet.hosts, 0), out
    for agent_id, host in fleet.hosts.items():
        assert aptkit.agent_restarts_since(host, cursors[agent_id]) == 0


def test_a_second_time_daemon_running_beside_chronyd_is_reported(fleet, stack):
    """The agent asks systemd, from inside its sandbox, which time daemons run: a unit named
    like ntpd's running beside the chrony backend's chronyd is a competing time setter."""
    agent_id = "pbx-bookworm-ansible"
    host = fleet.hosts[agent_id]
    host.ok("systemd-run --unit=ntp.service --description='a second time daemon' sleep 600")

    host.ok("clockfleet agent --config /etc/clockfleet/agent.yaml --once >/dev/null")

    report = stack.wait_report(agent_id, lambda r: bool(r.get("time_setters")), host=host)
    assert report["time_setters"] == [
        {"kind": "daemon", "program": "ntpd", "source": "ntp.service"}
    ]
