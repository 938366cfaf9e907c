"""Every broken fleet file: exit 2, `FILE:LINE: PATH: reason` on stderr, nothing published."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.devstack.mosquitto import ShippedBroker, start_shipped
from clockfleet.publisher.cli import publish_main
from tests.publisher.kit import retained

GOOD_REGION = """\
regions:
  us-east:
    timezone: America/New_York
    servers:
      - {host: ntp1.example.net}
"""


def region_with(*lines: str) -> str:
    return GOOD_REGION + "".join(f"    {line}\n" for line in lines)


def servers(*entries: str) -> str:
    return "regions:\n  r1:\n    servers:\n" + "".join(f"      - {e}\n" for e in entries)


def with_agent(agent: str) -> str:
    return GOOD_REGION + "agents:\n  " + agent + "\n"


# Each level holds ten aliases of the one before: nine levels stand for 10^9 nodes.
LAUGHS = list(zip("abcdefgh", "bcdefghi", strict=True))
SIXTY_FIVE = servers(*[f"{{host: 192.0.2.{i}}}" for i in range(1, 66)])

# id -> (file text, the line and path, the reason)
CASES: dict[str, tuple[str, str, str]] = {
    "unknown-top-key": (
        GOOD_REGION + "signing_kye: k.key\n",
        ":6: signing_kye:",
        "unknown key 'signing_kye'",
    ),
    "unknown-region-key": (
        region_with("poll_intervall_s: 60"),
        ":6: regions.us-east.poll_intervall_s:",
        "unknown key",
    ),
    "unknown-server-key": (
        servers("{host: ntp1.example.net, prot: 123}"),
        ":4: regions.r1.servers[0].prot:",
        "unknown key 'prot'",
    ),
    "unknown-defaults-key": (
        "defaults: {poll_interval: 60}\n" + GOOD_REGION,
        ":1: defaults.poll_interval:",
        "unknown key",
    ),
    "unknown-agent-key": (
        with_agent("acme-01: {region: us-east, tz: Europe/Paris}"),
        ":7: agents.acme-01.tz:",
        "unknown key 'tz'",
    ),
    "region-id-with-dot": (
        "regions:\n  us.east:\n    servers: [{host: ntp1.example.net}]\n",
        ":2: regions.us.east:",
        "must match [A-Za-z0-9_-]{1,64}",
    ),
    "agent-id-with-space": (
        with_agent("acme 01: {region: us-east}"),
        ":7: agents.acme 01:",
        "must match",
    ),
    "host-with-space": (
        servers("{host: ntp1 example.net}"),
        ":4: regions.r1.servers[0].host:",
        "holds ' '",
    ),
    "host-with-shell-characters": (
        servers("{host: 'ntp1;reboot'}"),
        ":4: regions.r1.servers[0].host:",
        "holds ';'",
    ),
    "host-with-ipv6-zone-id": (
        servers("{host: 'fe80::1%eth0'}"),
        ":4: regions.r1.servers[0].host:",
        "holds '%'",
    ),
    "host-not-an-ip-or-dns-name": (
        servers("{host: 'ntp1..example.net'}"),
        ":4: regions.r1.servers[0].host:",
        "is not a DNS name",
    ),
    "host-not-a-string": (
        servers("{host: 12}"),
        ":4: regions.r1.servers[0].host:",
        "must be a host name or IP address",
    ),
    "host-missing": (servers("{port: 123}"), ":4: regions.r1.servers[0]:", "missing `host`"),
    "port-zero": (
        servers("{host: a.example, port: 0}"),
        "servers[0].port:",
        "0 is outside 1..65535",
    ),
    "port-too-high": (
        servers("{host: a.example, port: 65536}"),
        ":4: regions.r1.servers[0].port:",
        "outside 1..65535",
    ),
    "port-as-string": (
        servers("{host: a.example, port: '123'}"),
        "servers[0].port:",
        "must be an integer, not str",
    ),
    "port-as-boolean": (
        servers("{host: a.example, port: true}"),
        "servers[0].port:",
        "must be an integer, not bool",
    ),
    "unknown-timezone": (
        "regions:\n  r1:\n    timezone: Mars/Olympus\n    servers: [{host: a.example}]\n",
        ":3: regions.r1.timezone:",
        "unknown time zone 'Mars/Olympus'",
    ),
    "timezone-as-path": (
        with_agent("acme-01: {region: us-east, timezone: ../../etc/passwd}"),
        ":7: agents.acme-01.timezone:",
        "unknown time zone",
    ),
    "empty-server-list": (
        "regions:\n  r1:\n    servers: []\n",
        ":3: regions.r1.servers:",
        "at least one server",
    ),
    "too-many-servers": (SIXTY_FIVE, ":3: regions.r1.servers:", "65 servers; at most 64"),
    "duplicate-server": (
        servers("{host: a.example}", "{host: a.example, port: 123}"),
        ":5: regions.r1.servers[1]:",
        "a.example:123 is listed twice",
    ),
    "servers-not-a-list": (
        "regions:\n  r1:\n    servers: a.example\n",
        ":3: regions.r1.servers:",
        "must be a list",
    ),
    "server-not-a-mapping": (
        servers("a.example"),
        ":4: regions.r1.servers[0]:",
        "must be a mapping",
    ),
    "region-without-servers": (
        "regions:\n  r1:\n    timezone: UTC\n",
        ":2: regions.r1:",
        "missing `servers`",
    ),
    "poll-interval-too-short": (
        "defaults:\n  poll_interval_s: 5\n" + GOOD_REGION,
        ":2: defaults.poll_interval_s:",
        "5 is outside 16..604800",
    ),
    "poll-interval-float": (
        region_with("poll_interval_s: 60.5"),
        ":6: regions.us-east.poll_interval_s:",
        "must be an integer, not float",
    ),
    "jitter-too-long": (
        region_with("resync_jitter_s: 7200"),
        ":6: regions.us-east.resync_jitter_s:",
        "outside 0..3600",
    ),
    "jitter-negative": (
        region_with("resync_jitter_s: -1"),
        "regions.us-east.resync_jitter_s:",
        "outside 0..3600",
    ),
    "agent-in-unknown-region": (
        with_agent("acme-01: {region: us-west}"),
        ":7: agents.acme-01.region:",
        "no region 'us-west' in this file (regions: us-east)",
    ),
    "agent-without-region": (
        with_agent("acme-01: {timezone: UTC}"),
        ":7: agents.acme-01:",
        "missing `region`",
    ),
    "agent-without-any-timezone": (
        "regions:\n  r1:\n    servers: [{host: a.example}]\nagents:\n  a1: {region: r1}\n",
        ":5: agents.a1:",
        "no `timezone`, and region 'r1' has no default timezone",
    ),
    "duplicate-region": (
        GOOD_REGION + "  us-east:\n    servers: [{host: b.example}]\n",
        ":6: regions.us-east:",
        "duplicate key",
    ),
    "no-regions": (
        "defaults: {poll_interval_s: 60}\n",
        "fleet.yaml:1: (top level):",
        "missing `regions`",
    ),
    "regions-empty": ("regions: {}\n", ":1: regions:", "no regions defined"),
    "top-level-list": ("- a\n- b\n", ":1: (top level):", "must be a mapping, not list"),
    "signing-key-not-a-path": (
        "signing_key: [a]\n" + GOOD_REGION,
        ":1: signing_key:",
        "must be a file path",
    ),
    "yaml-syntax-error": ("regions:\n  r1: {servers: [\n", "fleet.yaml:3: ", "YAML syntax error"),
    "empty-file": ("", "fleet.yaml: ", "the file is empty"),
    "recursive-alias": (
        "regions: &a\n  r1: *a\n",
        "fleet.yaml: ",
        "refers to a node that contains",
    ),
    "alias-bomb": (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in LAUGHS)
        + GOOD_REGION,
        "fleet.yaml: ",
        "values once aliases are expanded",
    ),
    "deep-nesting": (
        "regions:\n  r1:\n    servers: " + "[" * 40 + "]" * 40 + "\n",
        "fleet.yaml: ",
        "nested more than 32 levels deep",
    ),
    "impossible-date": (
        "regions:\n  r1:\n    timezone: 2026-13-45\n    servers: [{host: a.example}]\n",
        ":3: regions.r1.timezone:",
        "unreadable value '2026-13-45': month must be in 1..12",
    ),
    "explicit-int-tag-on-text": (
        servers("{host: a.example, port: !!int abc}"),
        ":4: regions.r1.servers[0].port:",
        "unreadable value 'abc'",
    ),
    "terminal-escape-in-a-key": (
        region_with('"\\e[2Jpoll": 60'),
        "regions.us-east.\\x1b[2Jpoll:",
        "unknown key '\\x1b[2Jpoll'",
    ),
    "only-comments": ("# nothing yet\n", "fleet.yaml: ", "the file is empty"),
}


@pytest.fixture(scope="module")
def shared_broker() -> Iterator[ShippedBroker]:
    """One broker for all cases: each case proves it published nothing there."""
    rundir = Path(tempfile.mkdtemp(prefix="cf-", dir="/tmp"))
    b = start_shipped(rundir, ["acme-01"])
    yield b
    b.daemon.stop()
    shutil.rmtree(rundir, ignore_errors=True)


def run(broker: ShippedBroker, config: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    rc = publish_main(
        [
            "--config",
            str(config),
            "--state-file",
            str(config.parent / "s.json"),
            *broker.login("publisher"),
        ]
    )
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_fleet_file_is_refused_with_file_path_and_reason(
    case: str, shared_broker: ShippedBroker, tmp_path: Path, capsys: pytest.CaptureFixture
):
    text, where, reason = CASES[case]
    config = tmp_path / "fleet.yaml"
    config.write_text(text)
    rc, err = run(shared_broker, config, capsys)
    assert rc == 2
    matching = [line for line in err.splitlines() if where in line and reason in line]
    assert matching, err
    assert matching[0].startswith(str(config))
    assert "nothing published" in err
    assert not (tmp_path / "s.json").exists()
    assert retained(shared_broker) == {}


def test_a_missing_file_is_refused(shared_broker: ShippedBroker, tmp_path: Path, capsys):
    rc, err = run(shared_broker, tmp_path / "nope.yaml", capsys)
    assert rc == 2
    assert f"{tmp_path / 'nope.yaml'}: no such file" in err


def test_a_file_that_is_not_utf8_is_refused(shared_broker: ShippedBroker, tmp_path: Path, capsys):
    config = tmp_path / "fleet.yaml"
    config.write_bytes(b"regions: caf\xe9\n")
    rc, err = run(shared_broker, config, capsys)
    assert rc == 2
    assert f"{config}: cannot read" in err


def test_every_problem_in_a_file_is_reported_at_once(
    shared_broker: ShippedBroker, tmp_path, capsys
):
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "regions:\n"
        "  r1:\n"
        "    timezone: Nowhere/City\n"
        "    servers: [{host: 'a b'}, {host: c.example, port: 0}]\n"
        "agents:\n"
        "  a1: {region: r9}\n"
    )
    rc, err = run(shared_broker, config, capsys)
    assert rc == 2
    problems = [line for line in err.splitlines() if line.startswith(str(config))]
    assert [p.split(": ")[1] for p in problems] == [
        "regions.r1.timezone",
        "regions.r1.servers[0].host",
        "regions.r1.servers[1].port",
        "agents.a1.region",
    ]
    assert err.splitlines()[-1].endswith("4 problems; nothing published")


def test_the_example_fleet_file_in_config_is_valid():
    from clockfleet.devstack.mosquitto import REPO
    from clockfleet.publisher import fleetfile

    fleet = fleetfile.load(REPO / "config" / "fleet.yaml")
    assert set(fleet.regions) == {"us-east", "eu-west"}
    assert fleet.agents["globex-02"].timezone == "Europe/Dublin"


def test_a_host_with_a_zone_id_and_a_second_line_exits_2_naming_file_path_and_reason(
    shared_broker: ShippedBroker, tmp_path: Path
):
    """The installed command: a host that would add a line to chrony's sources file."""
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "regions:\n  r1:\n    servers:\n"
        '      - {host: "fe80::1%eth0\\nserver 203.0.113.66 iburst prefer"}\n'
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "clockfleet"),
            *("publish", "--config", str(config), "--state-file", str(tmp_path / "s.json")),
            *shared_broker.login("publisher"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    first, *rest = done.stderr.splitlines()
    assert first.startswith(f"{config}:4: regions.r1.servers[0].host: host ")
    assert "holds '%'" in first and "\\nserver 203.0.113.66" in first
    assert rest == [f"clockfleet publish: {config}: 1 problem; nothing published"]
    assert retained(shared_broker) == {}
