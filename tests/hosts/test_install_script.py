"""scripts/ensure-debs.sh, which `make demo` and `make test` run as root, installs packages
without starting their daemons (chrony's would step the clock, mosquitto's take port 1883),
on a Debian 12 host running systemd, where a package's postinst would start them."""

from __future__ import annotations

import pytest

from tests.hosts import hostkit

pytestmark = pytest.mark.slow
SCRIPT = hostkit.REPO / "scripts" / "ensure-debs.sh"


def _active(host: hostkit.SystemdHost, unit: str) -> str:
    return host.sh(f"systemctl is-active {unit}").out.strip()


def test_on_this_host_a_plain_install_starts_the_daemon(fresh_host):
    """The control: what the script prevents does happen here without it."""
    host = fresh_host("bookworm", install=False)
    host.ok("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto")
    try:
        assert _active(host, "mosquitto") == "active"
    finally:
        host.sh("systemctl stop mosquitto")


def test_the_install_script_starts_no_daemon_and_leaves_no_policy_behind(fresh_host):
    host = fresh_host("bookworm", install=False)
    host.put("/root/ensure-debs.sh", SCRIPT.read_bytes(), 0o755)

    out = host.ok("sh /root/ensure-debs.sh mosquitto 2>&1")

    assert "no daemon started" in out
    assert host.ok("dpkg-query -W -f='${Status}' mosquitto") == "install ok installed"
    assert host.sh("systemctl is-enabled mosquitto").out.strip() == "enabled"  # postinst ran
    assert _active(host, "mosquitto") == "inactive"
    assert host.sh("pgrep -x mosquitto").code == 1
    assert host.sh("test -e /usr/sbin/policy-rc.d").code == 1


def test_an_administrators_own_policy_is_put_back(fresh_host):
    host = fresh_host("bookworm", install=False)
    host.put("/root/ensure-debs.sh", SCRIPT.read_bytes(), 0o755)
    own = "#!/bin/sh\n# the site's own policy\nexit 0\n"
    host.put("/usr/sbin/policy-rc.d", own, 0o755)

    host.ok("sh /root/ensure-debs.sh mosquitto 2>&1")

    assert _active(host, "mosquitto") == "inactive"
    assert host.ok("cat /usr/sbin/policy-rc.d") == own
