"""The cloud-init template (issues 13 and 21) on a new Debian 11/12/13 host under systemd, run
by the suite's own cloud-init (20.4, 22.4, 25.1): its `apt:` source and the archive key it
writes bring the package from a signed repository served on 127.0.0.1 (conftest.apt_archive),
the host comes up synced with its profile's zone, and later upgrades from that repository.

cloud-init is in the images but off (packaging/images/customize-rootfs.sh): the test seeds a
NoCloud datasource with the template as an operator fills it in and runs cloud-init's four
stages in its own order, as the boot would (init --local, init, modules config, modules
final). What the test adds is the cloud's part, never the template's: the image's own Debian
mirror out of apt's sources (no test traffic leaves this machine), no network configuration
or hostname from the datasource, no locale (minbase has none).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.hosts import aptkit, hostkit
from tests.hosts.aptkit import Repo
from tests.hosts.stack import Stack

pytestmark = pytest.mark.slow

TEMPLATE = hostkit.REPO / "packaging/cloud-init/clockfleet-agent.yaml"
STAGES = ("init --local", "init", "modules --mode=config", "modules --mode=final")
CLOUD_CFG = (
    "datasource_list: [NoCloud, None]\n"
    "network: {config: disabled}\n"
    "preserve_hostname: true\n"
    "locale: false\n"
)


def render(values: dict[str, str]) -> str:
    """The template as a provisioning system fills it in (the comments stay as they are)."""
    lines = []
    for line in TEMPLATE.read_text().splitlines():
        if not line.lstrip().startswith("#"):
            indent = line[: len(line) - len(line.lstrip())]
            for key, value in values.items():
                # A multi-line value (PEM) keeps the placeholder's indentation on every line.
                line = line.replace(f"@{key}@", value.replace("\n", "\n" + indent))
            assert "@" not in line.split(" #")[0], line
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_template_is_cloud_config_with_every_placeholder_documented():
    text = TEMPLATE.read_text()
    used = set(re.findall(r"@([A-Z_]+)@", text.split("\napt:", 1)[1]))
    header = text.split("\napt:", 1)[0]

    assert text.startswith("#cloud-config\n")
    assert used and all(f"@{name}@" in header for name in used)


@dataclass
class CloudHost:
    host: hostkit.SystemdHost
    repo: Repo
    agent_id: str
    timezone: str


@pytest.fixture(scope="module", params=hostkit.SUITES)
def cloud_host(request, images, debs, stack: Stack, apt_archive) -> Iterator[CloudHost]:
    """A new host of that suite provisioned by cloud-init from the template, its repository
    holding this checkout's package."""
    suite = request.param
    repo = apt_archive.repo(f"cloud-{suite}")
    repo.publish(debs(suite))
    agent_id = f"pbx-{suite}-cloud"
    tz = stack.add_agent(agent_id)
    user_data = render(
        {
            "AGENT_ID": agent_id,
            "REGION": "hosts",
            "TIMEZONE": "UTC",
            "BROKER": stack.url,
            "PASSWORD": stack.broker.password(agent_id),
            "KEY_ID": "ops-hosts",
            "TRUST_KEY": stack.pub.read_text().strip(),
            "CA_PEM": stack.broker.ca_file.read_text().strip(),
            "APT_URL": repo.url,
            "APT_KEY": repo.key_asc.strip(),
        }
    )
    # RFC 4330's random start-up delay would only slow the test down.
    user_data = user_data.replace(
        "      tz_root: /\n", "      tz_root: /\n      startup_delay_s: 0\n"
    )
    host = hostkit.SystemdHost(images(suite), suite).start()
    try:
        aptkit.offline_apt(host)
        host.put("/var/lib/cloud/seed/nocloud/user-data", user_data)
        host.put("/var/lib/cloud/seed/nocloud/meta-data", f"instance-id: {agent_id}\n")
        host.put("/etc/cloud/cloud.cfg.d/99-clockfleet-tests.cfg", CLOUD_CFG)
        for stage in STAGES:
            host.ok(f"cloud-init {stage} 2>&1", timeout_s=300)
        yield CloudHost(host, repo, agent_id, tz)
    finally:
        host.stop()


def test_cloud_init_installs_the_package_from_the_repository_and_the_host_comes_up_synced(
    cloud_host: CloudHost, stack: Stack
):
    host = cloud_host.host
    suite = host.suite

    report = stack.wait_report(cloud_host.agent_id, lambda r: r["ok"], timeout_s=40, host=host)

    assert report["discipline"] == "chrony"  # the template's backend, from the generator
    assert report["software"] == aptkit.upstream_version()
    assert aptkit.installed_version(host) == aptkit.debian_version(report["software"], suite)
    # From the repository, through the source cloud-init wrote for this suite.
    policy = host.ok("apt-cache policy clockfleet-agent")
    assert f"{cloud_host.repo.url} {suite}/main amd64 Packages" in policy
    hostkit.wait_for(
        lambda: host.ok("timedatectl show -p Timezone --value").strip() == cloud_host.timezone,
        15,
        "the profile's time zone",
    )
    assert host.ok("stat -c '%U %G %a' /etc/clockfleet/mqtt-password").strip() == (
        "root clockfleet 640"
    )


def test_the_host_later_upgrades_from_the_repository(cloud_host: CloudHost, stack: Stack, debs):
    host = cloud_host.host
    newer = aptkit.upstream_version() + aptkit.NEWER_SUFFIX
    stack.wait_report(cloud_host.agent_id, lambda r: r["ok"], timeout_s=40, host=host)
    conf = host.ok("md5sum /etc/clockfleet/agent.yaml")
    cloud_host.repo.publish(debs(host.suite, newer))

    host.ok("apt-get -q update 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get -q -y upgrade 2>&1")

    assert aptkit.installed_version(host) == aptkit.debian_version(newer, host.suite)
    report = stack.wait_report(
        cloud_host.agent_id, lambda r: r["ok"] and r.get("software") == newer, host=host
    )
    assert report["discipline"] == "chrony"
    assert host.ok("md5sum /etc/clockfleet/agent.yaml") == conf
