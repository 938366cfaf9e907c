"""The agent's signed apt repository on a Debian 12 host under systemd (issue 21, "It must
show"): the repository added with its keyring as docs/delivery.md says, `apt-get install
clockfleet-agent`, the agent reports; a newer build published to the repository, `apt-get
upgrade`: the agent reports on the new version, its agent.yaml kept, restarted once, its
state kept; a downgrade works the same way; then an `ntpdate` line in /etc/cron.d is
reported as a competing time setter (and left where it is).

One container walks it all (tests run in file order and build on each other), against a
repository of its own served on 127.0.0.1 (conftest.apt_archive), with the broker, NTP
servers and publisher of conftest.stack.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.hosts import aptkit, hostkit
from tests.hosts.aptkit import Repo
from tests.hosts.stack import Stack, configure

pytestmark = pytest.mark.slow

SUITE = "bookworm"
AGENT = "pbx-apt-bookworm"
OLD = aptkit.upstream_version()
NEW = OLD + aptkit.NEWER_SUFFIX
KEYRING = "/etc/apt/keyrings/clockfleet-archive-keyring.gpg"


@dataclass
class Walk:
    host: hostkit.SystemdHost
    repo: Repo


@pytest.fixture(scope="module")
def walk(images, debs, stack, apt_archive) -> Iterator[Walk]:
    repo = apt_archive.repo(f"walk-{SUITE}")
    repo.publish(debs(SUITE))
    host = hostkit.SystemdHost(images(SUITE), SUITE).start()
    try:
        aptkit.offline_apt(host)
        yield Walk(host, repo)
    finally:
        host.stop()


def apt(host: hostkit.SystemdHost, args: str) -> str:
    return host.ok(f"DEBIAN_FRONTEND=noninteractive apt-get -q {args} 2>&1", timeout_s=180)


def online_on(stack: Stack, version: str):
    """The agent's latest status: online, announcing this software version."""

    def check():
        with stack.lock:
            statuses = stack.statuses.get(AGENT, [])
            last = statuses[-1] if statuses else None
        return last if last and last["state"] == "online" and last["software"] == version else None

    return check


def settled_restarts(host: hostkit.SystemdHost, cursor: str) -> int:
    """Agent starts since `cursor`, once nothing is left to restart it: the path unit's
    service (woken by dpkg's writes under /etc/clockfleet) has finished."""
    hostkit.wait_for(
        lambda: (
            host.unit("ActiveState", "clockfleet-agent-config.service") != "activating"
            and host.unit("ActiveState") == "active"
        ),
        30,
        "clockfleet-agent-config.service to finish",
    )
    return aptkit.agent_restarts_since(host, cursor)


def state_files(host: hostkit.SystemdHost) -> dict[str, object]:
    names = host.ok("ls /var/lib/clockfleet").split()
    remembered = json.loads(host.ok("cat /var/lib/clockfleet/state.json"))
    return {"files": sorted(names), "state": remembered}


def test_apt_get_install_from_the_repository_with_its_keyring_and_the_agent_reports(walk, stack):
    host = walk.host
    # As docs/delivery.md tells an operator: the keyring, the source naming it, the pin.
    host.put(KEYRING, (walk.repo.path / aptkit.KEYRING_GPG).read_bytes())
    host.put(
        "/etc/apt/sources.list.d/clockfleet.sources",
        f"Types: deb\nURIs: {walk.repo.url}\nSuites: {SUITE}\nComponents: main\n"
        f"Signed-By: {KEYRING}\n",
    )
    host.put("/etc/apt/preferences.d/clockfleet", aptkit.PIN)

    apt(host, "update")
    apt(host, "install -y clockfleet-agent")
    configure(host, stack, AGENT)

    report = stack.wait_report(AGENT, lambda r: r["ok"], host=host)
    assert report["software"] == OLD
    assert aptkit.installed_version(host) == aptkit.debian_version(OLD, SUITE)
    hostkit.wait_for(online_on(stack, OLD), 15, f"status online on {OLD}")


def test_apt_get_upgrade_installs_the_newer_build_keeping_agent_yaml_and_state(walk, stack, debs):
    host = walk.host
    stack.wait_report(AGENT, lambda r: r["ok"], host=host)
    conf = host.ok("md5sum /etc/clockfleet/agent.yaml")
    before = state_files(host)
    session = max(stack.sessions(AGENT))
    cursor = aptkit.journal_cursor(host)
    walk.repo.publish(debs(SUITE, NEW))

    apt(host, "update")
    out = apt(host, "upgrade -y")

    assert aptkit.installed_version(host) == aptkit.debian_version(NEW, SUITE), out
    status = hostkit.wait_for(online_on(stack, NEW), 30, f"status online on {NEW}")
    report = stack.wait_report(AGENT, lambda r: r["ok"] and r.get("software") == NEW, host=host)
    assert host.ok("md5sum /etc/clockfleet/agent.yaml") == conf
    # No prompt and no copy beside it: the example did not change, so dpkg kept the file.
    assert host.ok("ls /etc/clockfleet").split() == [
        *("agent.yaml", "ca.pem", "mqtt-password", "trust")
    ]
    assert settled_restarts(host, cursor) == 1
    # The state directory survived: the replay-protection versions as they were, the
    # session counter one on from the one it recorded.
    after = state_files(host)
    assert set(before["files"]) <= set(after["files"])
    for key in ("list_versions", "profile_version"):
        assert after["state"][key] == before["state"][key]
    assert status["session"] == after["state"]["session"] == before["state"]["session"] + 1
    assert before["state"]["session"] == session
    assert report["list_version"] == before["state"]["list_versions"]["hosts"]


def test_a_downgrade_to_the_older_build_works_the_same_way(walk, stack):
    host = walk.host
    conf = host.ok("md5sum /etc/clockfleet/agent.yaml")
    cursor = aptkit.journal_cursor(host)

    apt(host, f"install -y --allow-downgrades clockfleet-agent={aptkit.debian_version(OLD, SUITE)}")

    assert aptkit.installed_version(host) == aptkit.debian_version(OLD, SUITE)
    hostkit.wait_for(online_on(stack, OLD), 30, f"status online on {OLD}")
    stack.wait_report(AGENT, lambda r: r["ok"] and r.get("software") == OLD, host=host)
    assert host.ok("md5sum /etc/clockfleet/agent.yaml") == conf
    assert settled_restarts(host, cursor) == 1


def test_an_ntpdate_line_in_cron_d_is_reported_as_a_competing_time_setter(walk, stack):
    host = walk.host
    clean = stack.wait_report(AGENT, lambda r: r["ok"] and "time_setters" in r, host=host)
    assert clean["time_setters"] == []  # the image has none: the control
    line = "*/10 * * * * root /usr/sbin/ntpdate -s pool.ntp.org >/dev/null 2>&1\n"
    host.put("/etc/cron.d/ntpdate", line)

    # As root beside the service: it syncs now (SIGUSR1) and prints that report.
    host.ok("clockfleet agent --config /etc/clockfleet/agent.yaml --once >/dev/null")

    report = stack.wait_report(AGENT, lambda r: bool(r.get("time_setters")), host=host)
    assert report["time_setters"] == [
        {"kind": "cron", "program": "ntpdate", "source": "/etc/cron.d/ntpdate:1"}
    ]
    assert "other time setters on this host" in host.journal()
    assert host.ok("cat /etc/cron.d/ntpdate") == line  # found, never removed


def test_the_pin_lets_nothing_but_clockfleet_agent_come_from_the_repository(walk, tmp_path):
    """What a stolen archive key could publish beside the agent (docs/trust.md): a package of
    another name, here one that no Debian mirror has, is never a candidate on the host."""
    root = tmp_path / "decoy"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        "Package: clockfleet-decoy\nVersion: 1.0-1~deb12u1\nArchitecture: all\n"
        "Maintainer: tests <tests@example.net>\nDescription: not for hosts\n"
    )
    deb = tmp_path / "clockfleet-decoy.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True)
    walk.repo.publish(deb)

    apt(walk.host, "update")
    policy = walk.host.ok("apt-cache policy clockfleet-decoy clockfleet-agent")

    decoy, agent = policy.split("clockfleet-agent:")
    assert "Candidate: (none)" in decoy and " -1 " in decoy, policy
    # The agent's versions keep priority 500 (the source's own line shows the -1 of the rest).
    assert f"Candidate: {aptkit.debian_version(NEW, SUITE)}" in agent, policy
    assert f"{aptkit.debian_version(NEW, SUITE)} 500" in agent, policy
