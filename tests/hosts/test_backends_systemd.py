"""Clock backends of the packaged agent under real systemd (issue 13, part 3): the chrony
backend drives the container's own chronyd (running -x: it never steps this machine's clock),
the timesyncd backend's drop-in and restart take effect; each runs with the user and the
(absent) capabilities its drop-in gives it."""

from __future__ import annotations

import pytest

from tests.hosts import hostkit
from tests.hosts.stack import configure

pytestmark = pytest.mark.slow


def proc_status(host: hostkit.SystemdHost) -> dict[str, str]:
    pid = hostkit.wait_for(lambda: host.main_pid(), 15, "a main pid")
    text = host.ok(f"cat /proc/{pid}/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_chrony_backend_hands_the_list_to_the_containers_chronyd(suite, fresh_host, stack):
    host = fresh_host(suite)
    assert host.ok("systemctl is-active chrony").strip() == "active"
    agent_id = f"pbx-{suite}-chrony"

    configure(host, stack, agent_id, backend="chrony")

    report = stack.wait_report(agent_id, lambda r: r["ok"], host=host)
    assert report["discipline"] == "chrony"
    chosen = report["server"]["host"]
    sources = hostkit.wait_for(
        lambda: chosen in host.ok("chronyc -n -c sources"), 15, "chronyd to list the server"
    )
    assert sources
    assert chosen in host.ok("cat /etc/chrony/sources.d/clockfleet.sources")


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_chrony_backend_runs_as_chronyds_user_without_capabilities(suite, fresh_host, stack):
    host = fresh_host(suite)
    agent_id = f"pbx-{suite}-chrony-user"
    configure(host, stack, agent_id, backend="chrony")
    stack.wait_report(agent_id, lambda r: r["ok"], host=host)

    status = proc_status(host)

    assert status["Uid"].split()[0] == host.ok("id -u _chrony").strip()
    assert int(status["CapEff"], 16) == 0
    assert int(status["CapBnd"], 16) == 0


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_timesyncd_backend_writes_its_dropin_and_restarts_timesyncd(suite, fresh_host, stack):
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
    restarted = int(host.unit("ExecMainStartTimestampMonotonic", "systemd-timesyncd.service"))
    assert restarted > started
    assert address in host.ok("timedatectl show-timesync -p SystemNTPServers --value")
    status = proc_status(host)
    assert int(status["CapEff"], 16) == 0  # root, but with no capability at all
