"""Bad input and faults for the packaged agent under real systemd (issue 13, "Bad input and
faults"): a broker or NTP servers down when the unit starts, a missing or unreadable
agent.yaml, password or trust key, the package over a hand-made install, a full state
directory. Each test boots its own container (about 3 s).

What systemd, dpkg and polkit decide (files missing or unreadable, the hand-made install, the
polkit grant) runs on all three suites; what only the agent's own code decides (a broker or
NTP servers down, a full disk) runs on Debian 12 alone, to keep `make test` short."""

from __future__ import annotations

import pytest

from clockfleet import devstack
from tests.hosts import hostkit
from tests.hosts.stack import REPO_UNIT, Stack, configure, put_password

pytestmark = pytest.mark.slow

AGENT_ONLY = ["bookworm"]


def failed_with(host: hostkit.SystemdHost, text: str) -> bool:
    return host.unit("ActiveState") == "failed" and text in host.journal()


@pytest.mark.parametrize("suite", AGENT_ONLY)
def test_agent_started_while_the_broker_is_down_reports_once_it_is_up(suite, fresh_host, stack):
    host = fresh_host(suite)
    agent_id = f"pbx-{suite}-nobroker"
    stack.add_agent(agent_id)
    stack.broker.stop()
    try:
        configure(host, stack, agent_id, publish=False)
        hostkit.wait_for(lambda: host.unit("ActiveState") == "active", 15, "the unit to start")
        hostkit.wait_for(
            lambda: "Connection refused" in host.journal(), 15, "a refused connect in the journal"
        )
        assert host.unit("NRestarts") == "0"  # retried inside the agent, not by crashing
    finally:
        stack.restart_broker()

    report = stack.wait_report(agent_id, lambda r: r["ok"], host=host)
    assert report["agent"] == agent_id


@pytest.mark.parametrize("suite", AGENT_ONLY)
def test_agent_with_no_ntp_server_answering_reports_the_failure_and_stays_up(
    suite, fresh_host, stack
):
    host = fresh_host(suite)
    silent = devstack.silent_udp(stack.servers[0].host)
    try:
        port = silent.getsockname()[1]
        stack.regions[f"silent-{suite}"] = [(stack.servers[0].host, port)]
        agent_id = f"pbx-{suite}-silent"
        configure(host, stack, agent_id, region=f"silent-{suite}")

        report = stack.wait_report(agent_id, lambda r: not r["ok"], host=host)
    finally:
        silent.close()

    assert [t["outcome"] for t in report["tried"]] == ["timeout"]
    assert host.unit("ActiveState") == "active"
    assert host.unit("NRestarts") == "0"


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_missing_password_stops_the_agent_with_one_clear_line_until_it_is_written(
    suite, fresh_host, stack
):
    host = fresh_host(suite)
    agent_id = f"pbx-{suite}-nopass"
    configure(host, stack, agent_id, password=False)

    hostkit.wait_for(
        lambda: failed_with(
            host, "/etc/clockfleet/agent.yaml: password_file /etc/clockfleet/mqtt-password"
        ),
        15,
        "the unit to fail naming the password file",
    )
    assert host.unit("NRestarts") == "0"
    put_password(host, stack, agent_id)

    stack.wait_report(agent_id, lambda r: r["ok"], host=host)
    assert host.unit("ActiveState") == "active"


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_unreadable_trust_key_stops_the_agent_until_its_mode_is_fixed(suite, fresh_host, stack):
    host = fresh_host(suite)
    agent_id = f"pbx-{suite}-badkey"
    # The key exists but only root may read it: the agent, as clockfleet, must not start
    # unsigned (that would accept any list) nor half-configured.
    configure(host, stack, agent_id, trust_mode=0o600)

    hostkit.wait_for(
        lambda: failed_with(host, "trust key"), 15, "the unit to fail naming the trust key"
    )
    assert stack.report(agent_id) is None
    host.ok("chmod 0644 /etc/clockfleet/trust/ops-hosts.pub")

    stack.wait_report(agent_id, lambda r: r["ok"], host=host)


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_removed_agent_yaml_stops_the_agent_with_one_clear_line(suite, fresh_host, stack):
    host = fresh_host(suite)
    agent_id = f"pbx-{suite}-noconf"
    configure(host, stack, agent_id)
    stack.wait_report(agent_id, lambda r: r["ok"], host=host)

    host.ok("rm /etc/clockfleet/agent.yaml")

    hostkit.wait_for(
        lambda: failed_with(host, "config file /etc/clockfleet/agent.yaml: no such file"),
        15,
        "the unit to fail naming agent.yaml",
    )
    assert host.unit("NRestarts") == "0"


@pytest.mark.parametrize("suite", AGENT_ONLY)
def test_full_state_directory_is_logged_and_the_agent_keeps_reporting(suite, fresh_host, stack):
    host = fresh_host(suite)
    # A 64 KiB file system, filled up: every state write fails with ENOSPC.
    host.ok(
        "mount -t tmpfs -o size=64k,mode=0755,uid=$(id -u clockfleet),gid=$(id -g clockfleet) "
        "tmpfs /var/lib/clockfleet && "
        "(dd if=/dev/zero of=/var/lib/clockfleet/filler bs=4k 2>/dev/null || true)"
    )
    agent_id = f"pbx-{suite}-diskfull"

    configure(host, stack, agent_id)

    stack.wait_report(agent_id, lambda r: r["ok"], host=host)
    hostkit.wait_for(
        lambda: "No space left on device" in host.journal(), 15, "ENOSPC in the journal"
    )
    assert host.unit("ActiveState") == "active"


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_package_takes_over_a_hand_made_install(suite, fresh_host, debs, stack: Stack):
    host = fresh_host(suite, install=False)
    # README's source install, with the package's own payload standing in for the venv that
    # `pip install` would make (there is no network in the container).
    host.put("/root/handmade.deb", debs(suite).read_bytes())
    host.ok(
        "dpkg-deb -x /root/handmade.deb /root/x && mv /root/x/opt/clockfleet-agent /opt/clockfleet"
        " && printf '#!/bin/sh\\nexec /opt/clockfleet/bin/python3 -I -m clockfleet \"$@\"\\n'"
        " > /usr/local/bin/clockfleet && chmod 755 /usr/local/bin/clockfleet"
        " && useradd --system --no-create-home --shell /usr/sbin/nologin clockfleet"
        " && install -d -m 0750 -g clockfleet /etc/clockfleet /etc/clockfleet/trust"
    )
    host.put("/etc/systemd/system/clockfleet-agent.service", REPO_UNIT.read_text())
    agent_id = f"pbx-{suite}-handmade"
    configure(host, stack, agent_id)
    host.ok("systemctl daemon-reload && systemctl enable --now clockfleet-agent 2>&1")
    first = stack.wait_report(agent_id, lambda r: r["ok"], host=host)
    conf = host.ok("md5sum /etc/clockfleet/agent.yaml")
    sessions = max(stack.sessions(agent_id))

    host.install(debs(suite))

    assert host.ok("md5sum /etc/clockfleet/agent.yaml") == conf
    assert host.sh("test -f /etc/systemd/system/clockfleet-agent.service.dpkg-handmade").code == 0
    assert host.unit("ExecStart").find("/opt/clockfleet-agent/bin/clockfleet") >= 0
    hostkit.wait_for(
        lambda: max(stack.sessions(agent_id)) > sessions, 20, "the packaged agent's session"
    )
    # The replay state carried over: the packaged agent applied the same list version.
    second = stack.wait_report(agent_id, lambda r: r["ok"] and r["at"] > first["at"], host=host)
    assert second["list_version"] == first["list_version"]
    assert host.unit("ActiveState") == "active"


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_without_the_packages_polkit_grant_the_zone_is_refused(suite, fresh_host, stack):
    # The control for test_timedatectl_shows_the_profiles_time_zone: it is the package's
    # polkit grant, not the container, that lets the unprivileged agent set the zone.
    host = fresh_host(suite)
    host.ok(
        "rm -f /usr/share/polkit-1/rules.d/50-clockfleet-agent.rules "
        "/var/lib/polkit-1/localauthority/10-vendor.d/50-clockfleet-agent.pkla && "
        "systemctl try-restart polkit.service"
    )
    before = host.ok("timedatectl show -p Timezone --value").strip()
    agent_id = f"pbx-{suite}-nopolkit"

    tz = configure(host, stack, agent_id)

    report = stack.wait_report(agent_id, lambda r: r["ok"], host=host)

    # The operator sees why in the report; the host keeps its zone.
    assert f"time zone {tz} not set: timedatectl set-timezone {tz} failed" in report["error"]
    assert report["timezone"] == before != tz
    assert host.ok("timedatectl show -p Timezone --value").strip() == before
