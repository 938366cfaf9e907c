"""Clock backends of the packaged agent under real systemd (issue 13, part 3): the chrony
backend makes the fleet's list the container's chronyd's only sources (chronyd runs -x: it
never steps this machine's clock), the timesyncd backend's drop-in and restart take effect;
both through the package's root helpers, the agent itself running as clockfleet with no
capability (test_privileges.py shows what it cannot do)."""

from __future__ import annotations

import pytest

from tests.helpers import next_loopback_address
from tests.hosts import hostkit
from tests.hosts.stack import configure

pytestmark = pytest.mark.slow


def proc_status(host: hostkit.SystemdHost) -> dict[str, str]:
    pid = hostkit.wait_for(lambda: host.main_pid(), 15, "a main pid")
    text = host.ok(f"cat /proc/{pid}/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def chrony_sources(host: hostkit.SystemdHost) -> set[str]:
    out = host.ok("chronyc -n -c sources")
    return {line.split(",")[2] for line in out.splitlines() if line.count(",") >= 2}


def debians_chrony_conf(host: hostkit.SystemdHost) -> str:
    """Put Debian's own chrony.conf back (the image removed its pool), its pool name
    resolving to a loopback address of its own so that no packet leaves this machine;
    returns that address, which chronyd then lists as a source."""
    pool = next_loopback_address()
    host.ok(
        "cp /usr/share/chrony/chrony.conf /etc/chrony/chrony.conf && "
        # UDP 323 on the shared loopback would clash between containers (as in the image).
        "echo 'cmdport 0' >> /etc/chrony/chrony.conf && "
        f"echo '{pool} 2.debian.pool.ntp.org' >> /etc/hosts && systemctl restart chrony"
    )
    hostkit.wait_for(lambda: pool in chrony_sources(host), 15, "chronyd to list the pool")
    return pool


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_chrony_backend_makes_the_fleets_list_chronyds_only_sources(suite, fresh_host, stack):
    host = fresh_host(suite)
    assert host.ok("systemctl is-active chrony").strip() == "active"
    pool = debians_chrony_conf(host)
    assert "pool 2.debian.pool.ntp.org iburst" in host.ok("cat /etc/chrony/chrony.conf")
    agent_id = f"pbx-{suite}-chrony"

    configure(host, stack, agent_id, backend="chrony")

    report = stack.wait_report(agent_id, lambda r: r["ok"], host=host)
    assert report["discipline"] == "chrony"
    fleet = {s.host for s in stack.servers}
    assert report["server"]["host"] in fleet
    # Debian's pool (and its sourcedirs) are gone from chronyd: the fleet's list alone.
    hostkit.wait_for(lambda: chrony_sources(host) == fleet, 15, "the fleet's list alone")
    assert pool not in chrony_sources(host)
    installed = host.ok("cat /etc/chrony/clockfleet/clockfleet.sources")
    assert all(f"server {h} port " in installed for h in fleet)
    assert "#clockfleet-agent# pool 2.debian.pool.ntp.org iburst" in host.ok(
        "cat /etc/chrony/chrony.conf"
    )


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_after_a_reboot_the_generator_and_the_helper_bring_the_chrony_backend_back(
    suite, fresh_host, stack
):
    host = fresh_host(suite)
    agent_id = f"pbx-{suite}-chrony-reboot"
    configure(host, stack, agent_id, backend="chrony")
    first = stack.wait_report(agent_id, lambda r: r["ok"], host=host)

    # systemd's halt signal, then a boot: /run (the generator's drop-in, the helper's
    # status) starts empty, so the generator runs at boot and the agent hands its unchanged
    # list over again.
    host.container.get_wrapped_container().restart(timeout=30)
    hostkit.wait_for(
        lambda: host.sh("systemctl is-system-running").out.strip() == "running", 60, "the boot"
    )

    report = stack.wait_report(agent_id, lambda r: r["ok"] and r["at"] > first["at"], host=host)
    assert report["discipline"] == "chrony"
    assert host.ok("systemctl show -p Environment --value clockfleet-agent").strip() == (
        "CLOCKFLEET_UNIT_BACKEND=chrony"
    )
    assert '"ok": true' in host.ok("cat /run/clockfleet-agent/chrony.status")
    assert report["server"]["host"] in chrony_sources(host)


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_chrony_backend_runs_as_its_own_user_without_capabilities(suite, fresh_host, stack):
    host = fresh_host(suite)
    agent_id = f"pbx-{suite}-chrony-user"
    configure(host, stack, agent_id, backend="chrony")
    stack.wait_report(agent_id, lambda r: r["ok"], host=host)

    status = proc_status(host)

    # Not chronyd's _chrony: a compromised chronyd shares nothing with the agent.
    assert status["Uid"].split()[0] == host.ok("id -u clockfleet").strip()
    assert status["Uid"].split()[0] != host.ok("id -u _chrony").strip()
    # ... nor a group: chronyd cannot read the agent's secrets, the agent not chronyd's files.
    assert "clockfleet" not in host.ok("id -Gn _chrony").split()
    assert "_chrony" not in host.ok("id -Gn clockfleet").split()
    chrony_gid = host.ok("getent group _chrony | cut -d: -f3").strip()
    assert chrony_gid not in [status["Gid"].split()[0], *status["Groups"].split()]
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapBnd"], 16) == 0


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_the_time_zone_grant_names_the_agents_user_only(suite, fresh_host):
    host = fresh_host(suite)
    before = host.ok("timedatectl show -p Timezone --value").strip()

    as_chronyd = host.sh("runuser -u _chrony -- timedatectl set-timezone Asia/Kolkata 2>&1")
    as_agent = host.sh("runuser -u clockfleet -- timedatectl set-timezone Europe/Lisbon 2>&1")

    # chronyd's user (a compromised chronyd) is refused; the agent's user, the control, not.
    assert as_chronyd.code != 0 and "Interactive authentication required" in as_chronyd.out
    assert as_agent.code == 0, as_agent.out
    assert host.ok("timedatectl show -p Timezone --value").strip() == "Europe/Lisbon" != before


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_timesyncd_backend_hands_its_dropin_to_the_helper_that_restarts_timesyncd(
    suite, fresh_host, stack
):
    if stack.port123 is None:
        pytest.skip("timesyncd speaks only to port 123: binding it needs root")
    host = fresh_host(suite)
    # chrony and systemd-timesyncd conflict: the host moves to timesyncd (offline, from the
    # image's cache).
    host.ok(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
        "/var/cache/clockfleet-image/systemd-timesyncd_*.deb 2>&1"
    )
    host.ok("systemctl start systemd-timesyncd")
    started = int(host.unit("ExecMainStartTimestampMonotonic", "systemd-timesyncd.service"))
    agent_id = f"pbx-{suite}-timesyncd"

    configure(host, stack, agent_id, region="hosts123", backend="timesyncd")

    report = stack.wait_report(agent_id, lambda r: r["ok"], host=host)
    assert report["discipline"] == "timesyncd"
    address = stack.port123.host
    assert address in host.ok("cat /etc/systemd/timesyncd.conf.d/clockfleet.conf")
    assert host.ok("stat -c %U /etc/systemd/timesyncd.conf.d/clockfleet.conf").strip() == "root"
    restarted = int(host.unit("ExecMainStartTimestampMonotonic", "systemd-timesyncd.service"))
    assert restarted > started
    assert address in host.ok("timedatectl show-timesync -p SystemNTPServers --value")
    assert "restarted systemd-timesyncd" in host.journal("clockfleet-agent-timesyncd.service")
    status = proc_status(host)
    # The agent itself: its own user, no capability (it was root, which D-Bus trusts).
    assert status["Uid"].split()[0] == host.ok("id -u clockfleet").strip()
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0
