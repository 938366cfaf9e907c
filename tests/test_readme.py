"""The README tells the truth: its commands run or parse, its names are the real ones.

Every command in the README's ```sh blocks is checked here: `clockfleet` command lines by
the real subcommand parsers (and the operator's flow keygen -> publish --dry-run -> publish
-> status is run for real against a Mosquitto), `make` targets against the Makefile, the
broker scripts against their own --help, `docker compose` services against compose.yaml,
and host-install commands (which change a host and cannot run here) by the repository files
they name. Metric, alert and outcome names are compared with the code and config.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clockfleet.collector.fleet_state import FleetState
from clockfleet.collector.metrics import LinkStats, families
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol.messages import OUTCOMES
from tests.compose.cli_check import problem
from tests.helpers import REPO

README = (REPO / "README.md").read_text()

# Commands that install onto a host (they need a real host to change); checked by the
# repository files they name.
HOST_SETUP = {"python3", "ln", "useradd", "install", "systemctl", "/opt/clockfleet/bin/pip"}
REPO_PATH = re.compile(r"^(agent|broker|config|collector|publisher|clockfleet)/")


def shell_blocks(text: str) -> list[str]:
    blocks = re.findall(r"^([ \t]*)```sh\n(.*?)^[ \t]*```", text, re.S | re.M)
    return ["\n".join(ln[len(indent) :] for ln in body.splitlines()) for indent, body in blocks]


def commands(text: str) -> list[list[str]]:
    """Every command in the README's sh blocks as an argv (env assignments kept in front)."""
    out = []
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words:
                    out.append(words)
    return out


def program(argv: list[str]) -> tuple[str, list[str]]:
    """(program, its arguments) with VAR=value prefixes left out."""
    i = 0
    while i < len(argv) and re.match(r"^[A-Z_]+=", argv[i]):
        i += 1
    return argv[i], argv[i + 1 :]


def of(name: str) -> list[list[str]]:
    return [args for prog, args in map(program, commands(README)) if prog == name]


# --- the commands -------------------------------------------------------------------------


def test_readme_starts_with_the_two_commands():
    first = shell_blocks(README)[0].split()
    assert first == ["make", "demo", "make", "test"]
    assert README.index("```sh") < README.index("## How it fits together")


def test_every_command_in_the_readme_is_one_this_test_knows_how_to_check():
    known = {"clockfleet", "make", "docker", *HOST_SETUP}
    unknown = [
        " ".join(argv)
        for argv in commands(README)
        if program(argv)[0] not in known and not program(argv)[0].startswith("broker/")
    ]
    assert unknown == []


def test_the_debian_packages_named_are_the_ones_make_demo_and_make_test_install():
    makefile = (REPO / "Makefile").read_text()
    section = README[README.index("## The two commands") : README.index("## How it fits")]
    named = set(re.findall(r"`([a-z0-9][a-z0-9.+-]+)`", section))
    for var in ("DEBS", "TEST_DEBS"):
        packages = re.search(rf"^{var} := (.*)$", makefile, re.M).group(1).split()
        assert set(packages) <= named, var


def test_make_commands_are_makefile_targets():
    targets = set(re.findall(r"^([a-z]+):", (REPO / "Makefile").read_text(), re.M))
    shown = of("make")
    assert shown
    assert [a for a in shown if a[0] not in targets] == []


def test_every_clockfleet_command_parses_with_the_real_subcommand():
    shown = of("clockfleet")
    assert len(shown) >= 6
    bad = [f"clockfleet {shlex.join(a)}: {why}" for a in shown if (why := problem(a))]
    assert bad == []


def test_broker_scripts_exist_and_know_every_flag_shown():
    for prog, args in map(program, commands(README)):
        if not prog.startswith("broker/"):
            continue
        script = REPO / prog
        assert script.is_file(), prog
        helptext = subprocess.run(
            [str(script), "--help"], capture_output=True, text=True, check=True
        ).stdout
        for flag in (a for a in args if a.startswith("--")):
            assert flag in helptext, f"{prog} {flag}"


def test_identities_command_as_shown_writes_a_password_per_identity(short_tmp: Path):
    (args,) = of("broker/clockfleet-identities")
    args = list(args)
    args[args.index("--out") + 1] = str(short_tmp / "ids")
    subprocess.run([str(REPO / "broker/clockfleet-identities"), *args], check=True)
    agents = [a for a in args if not a.startswith("-") and a != str(short_tmp / "ids")]
    for who in ("publisher", "collector", *agents):
        assert (short_tmp / "ids" / f"{who}.password").is_file()


def test_docker_compose_commands_name_compose_services():
    services = set(yaml.safe_load((REPO / "compose.yaml").read_text())["services"])
    shown = of("docker")
    assert shown
    for args in shown:
        assert args[0] == "compose"
        if args[1] == "run":
            assert args[-1] in services, args


def test_host_setup_commands_name_files_that_exist_in_the_repository():
    named = [
        a
        for prog, args in map(program, commands(README))
        if prog in HOST_SETUP
        for a in args
        if REPO_PATH.match(a)
    ]
    assert named  # the unit file and the example agent.yaml at least
    assert [a for a in named if not (REPO / a).exists()] == []


# --- the operator's flow, for real --------------------------------------------------------


def _local(args: list[str], broker: ShippedBroker) -> list[str]:
    """The README's command against this test's broker (the shipped config, TLS listener):
    the same identity, with the broker's address, CA and that identity's password file."""
    user = args[args.index("--username") + 1] if "--username" in args else None
    swap = {
        "--broker": broker.tls_url,
        "--ca-file": str(broker.ca_file),
        "--password-file": str(broker.password_file(user)) if user else "",
    }
    return [swap.get(prev, a) if prev in swap else a for prev, a in zip(["", *args], args)]


def _run(
    args: list[str], cwd: Path, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "clockfleet", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
    )


def _connection_env(home: Path, broker: ShippedBroker) -> dict[str, str | None]:
    """The README's connection file, written where it says (~/.config/clockfleet/, here under
    the test's XDG_CONFIG_HOME), with this test's broker, CA and that identity's password."""
    (block,) = re.findall(r"^```yaml\n(.*?)^```", README, re.S | re.M)
    shown = yaml.safe_load(block)
    assert set(shown) == {"broker", "username", "password_file", "ca_file"}
    folder = home / "clockfleet"
    folder.mkdir(parents=True)
    swap = {
        "broker": broker.tls_url,
        "password_file": str(broker.password_file(shown["username"])),
        "ca_file": str(broker.ca_file),
    }
    (folder / "operator.yaml").write_text(yaml.safe_dump({**shown, **swap}))
    # The suite sets CLOCKFLEET_CONNECTION empty (no default file: tests/conftest.py); the
    # README's way is the default file, so its commands run without that variable.
    return {"XDG_CONFIG_HOME": str(home), "CLOCKFLEET_CONNECTION": None}


@pytest.fixture
def operator_dir(short_tmp: Path) -> Path:
    """A working directory with the repository's example config/fleet.yaml."""
    (short_tmp / "config").mkdir()
    shutil.copy(REPO / "config/fleet.yaml", short_tmp / "config/fleet.yaml")
    return short_tmp


def test_keygen_as_shown_writes_the_key_pair(operator_dir: Path):
    (args,) = [a for a in of("clockfleet") if a[0] == "keygen"]
    done = _run(args, operator_dir)
    assert done.returncode == 0, done.stderr
    out = Path(args[args.index("--out") + 1])
    key_id = args[args.index("--key-id") + 1]
    assert (operator_dir / out / f"{key_id}.key").is_file()
    assert (operator_dir / out / f"{key_id}.pub").is_file()


def _publish(dry_run: bool, prune: bool) -> list[str]:
    (args,) = [
        a
        for a in of("clockfleet")
        if a[0] == "publish" and ("--dry-run" in a) == dry_run and ("--prune" in a) == prune
    ]
    # config/fleet.yaml names documentation servers (example.net, 192.0.2.10) that answer
    # nobody: the preflight (tests/publisher/test_preflight.py) would block the publish.
    return [*args, "--no-preflight"]


def test_publish_dry_run_then_publish_then_status_as_shown(
    operator_dir: Path, broker: ShippedBroker
):
    (keygen,) = [a for a in of("clockfleet") if a[0] == "keygen"]
    assert _run(keygen, operator_dir).returncode == 0
    dry = _local(_publish(dry_run=True, prune=False), broker)
    real = _local(_publish(dry_run=False, prune=False), broker)
    env = _connection_env(operator_dir / "xdg", broker)

    done = _run(dry, operator_dir, env)
    assert done.returncode == 0, done.stderr
    assert "would publish region us-east" in done.stdout
    done = _run(dry, operator_dir, env)
    assert "would publish region us-east" in done.stdout  # the dry run published nothing

    done = _run(real, operator_dir, env)
    assert done.returncode == 0, done.stderr
    done = _run(dry, operator_dir, env)
    assert done.returncode == 0 and "would publish" not in done.stdout, done.stdout

    for status in (a for a in of("clockfleet") if a[0] == "status"):
        done = _run(_local(status, broker), operator_dir)
        assert done.returncode == 0, done.stderr
        # Lists are published but no agent has reported yet.
        if "--json" in status:
            assert json.loads(done.stdout) == []
        else:
            assert "0 agents" in done.stdout


def test_prune_as_shown_withdraws_a_region_removed_from_the_file(
    operator_dir: Path, broker: ShippedBroker
):
    (keygen,) = [a for a in of("clockfleet") if a[0] == "keygen"]
    assert _run(keygen, operator_dir).returncode == 0
    env = _connection_env(operator_dir / "xdg", broker)
    assert _run(_local(_publish(False, False), broker), operator_dir, env).returncode == 0
    fleet = operator_dir / "config/fleet.yaml"
    data = yaml.safe_load(fleet.read_text())
    del data["regions"]["eu-west"]
    data["agents"] = {a: p for a, p in data["agents"].items() if p["region"] != "eu-west"}
    fleet.write_text(yaml.safe_dump(data))
    prune_dry = _local(_publish(dry_run=True, prune=True), broker)
    prune = _local(_publish(dry_run=False, prune=True), broker)

    done = _run(prune_dry, operator_dir, env)
    assert done.returncode == 0 and "would withdraw region eu-west" in done.stdout, done.stdout
    done = _run(prune, operator_dir, env)
    assert done.returncode == 0 and "withdrew region eu-west" in done.stdout, done.stdout
    done = _run(prune_dry, operator_dir, env)
    assert "withdraw" not in done.stdout, done.stdout


# --- names --------------------------------------------------------------------------------


def test_every_outcome_of_the_contract_is_explained_in_troubleshooting():
    section = README[README.index("## Troubleshooting") :]
    rows = set(re.findall(r"^\| `([a-z-]+)` \|", section, re.M))
    assert rows == set(OUTCOMES)


def test_metric_names_are_the_collectors():
    real = set()
    for fam in families(FleetState(prefix="clock/v1"), LinkStats()):
        real.add(fam.name + ("_total" if fam.kind == "counter" else ""))
    shown = set(re.findall(r"`(clockfleet_[a-z_]+)", README))
    assert shown == real


def test_alert_names_are_the_rules():
    rules = yaml.safe_load((REPO / "config/alerts.yml").read_text())
    real = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    shown = set(re.findall(r"`(Clockfleet[A-Za-z]+)`", README))
    assert shown == real


def test_files_and_links_the_readme_names_exist():
    links = re.findall(r"\]\(([^)#:]+)\)", README)
    paths = [
        p
        for p in re.findall(r"`([\w./-]+)`", README)
        if REPO_PATH.match(p) or p.startswith("tests/")
    ]
    named = {*links, *paths, "BENCHMARKS.md"}
    assert [p for p in sorted(named) if not (REPO / p).exists()] == []


def test_try_once_as_shown_syncs_with_the_example_agent_yaml(
    short_tmp: Path, broker: ShippedBroker, chrony_server
):
    """The install section's `--once` line, with agent/agent.yaml pointed at the shipped
    broker's TLS listener (its identity, its CA) and a real chronyd, after a signed list was
    published."""
    ntp = chrony_server()
    keys = short_tmp / "keys"
    assert _run(["keygen", "--out", str(keys), "--key-id", "ops-2026"], short_tmp).returncode == 0
    fleet = short_tmp / "fleet.yaml"
    fleet.write_text(
        yaml.safe_dump(
            {
                "regions": {
                    "us-east": {
                        "timezone": "America/New_York",
                        "servers": [{"host": ntp.host, "port": ntp.port}],
                    }
                },
                "agents": {"acme-01": {"region": "us-east"}},
            }
        )
    )
    publish = ["publish", "--config", str(fleet), "--signing-key", str(keys / "ops-2026.key")]
    assert _run([*publish, *broker.login("publisher")], short_tmp).returncode == 0

    config = yaml.safe_load((REPO / "agent/agent.yaml").read_text())
    assert config["id"] == "acme-01"
    # tz_root under the test's directory: the machine's own time zone is never at stake,
    # even if --no-timezone were ignored.
    config.update(
        broker=broker.tls_url,
        password_file=str(broker.password_file(config["username"])),
        ca_file=str(broker.ca_file),
        trust_keys=[str(keys)],
        tz_root=str(short_tmp / "tzroot"),
    )
    (short_tmp / "agent.yaml").write_text(yaml.safe_dump(config))
    (once,) = [a for a in of("clockfleet") if a[0] == "agent"]
    args = [
        str(short_tmp / "agent.yaml")
        if a == "/etc/clockfleet/agent.yaml"
        else str(short_tmp / "try")
        if a == "/tmp/clockfleet-try"
        else a
        for a in once
    ]
    done = _run(args, short_tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["tried"][0]["outcome"] == "ok"
    assert not (short_tmp / "tzroot").exists()  # --no-timezone: the zone is left alone
