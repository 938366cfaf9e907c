"""The cloud-init template (issue 13, part 2) on a new Debian 11/12/13 host under systemd.

cloud-init itself is not in the images (it would look for a cloud). The test plays its three
stages in cloud-init's own order, on the template as an operator fills it in: write_files
(init stage), packages (config stage; cloud-init's apt runs with --force-confold), runcmd
(final stage). The repository in `apt:` is the one part not exercised: the package comes
from this checkout instead.
"""

from __future__ import annotations

import re
import shlex

import pytest
import yaml

from tests.hosts import hostkit

pytestmark = pytest.mark.slow

TEMPLATE = hostkit.REPO / "packaging/cloud-init/clockfleet-agent.yaml"


def render(values: dict[str, str]) -> dict:
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
    return yaml.safe_load("\n".join(lines))


def test_template_is_cloud_config_with_every_placeholder_documented():
    text = TEMPLATE.read_text()
    used = set(re.findall(r"@([A-Z_]+)@", text.split("\napt:", 1)[1]))
    header = text.split("\napt:", 1)[0]

    assert text.startswith("#cloud-config\n")
    assert used and all(f"@{name}@" in header for name in used)


@pytest.mark.parametrize("suite", hostkit.SUITES)
def test_new_host_from_the_template_comes_up_synced_with_its_zone(suite, fresh_host, stack, debs):
    host = fresh_host(suite, install=False)
    agent_id = f"pbx-{suite}-cloud"
    tz = stack.add_agent(agent_id)
    config = render(
        {
            "AGENT_ID": agent_id,
            "REGION": "hosts",
            "TIMEZONE": "UTC",
            "BROKER": stack.url,
            "PASSWORD": stack.broker.password(agent_id),
            "KEY_ID": "ops-hosts",
            "TRUST_KEY": stack.pub.read_text().strip(),
            "CA_PEM": stack.broker.ca_file.read_text().strip(),
        }
    )

    for f in config["write_files"]:
        content = f["content"]
        if f["path"].endswith("agent.yaml"):
            content += "startup_delay_s: 0\n"  # RFC 4330's random delay only slows the test
        host.put(f["path"], content, int(f["permissions"], 8))
    assert config["packages"] == ["clockfleet-agent"]
    host.install(debs(suite), "-o Dpkg::Options::=--force-confold")
    for argv in config["runcmd"]:
        host.ok(shlex.join(argv))

    report = stack.wait_report(agent_id, lambda r: r["ok"], timeout_s=40, host=host)
    assert report["discipline"] == "chrony"  # the template's backend, from the generator
    hostkit.wait_for(
        lambda: host.ok("timedatectl show -p Timezone --value").strip() == tz,
        15,
        "the profile's time zone",
    )
    assert host.ok("stat -c '%U %G %a' /etc/clockfleet/mqtt-password").strip() == (
        "root clockfleet 640"
    )
