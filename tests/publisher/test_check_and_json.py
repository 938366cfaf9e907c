"""`clockfleet publish --check` (the file alone, for CI), `--json` (one object on stdout), and
the exit codes: one per outcome, the same in --help, docs/publisher.md and --json."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.publisher import rollout_run
from clockfleet.publisher.cli import publish_main
from clockfleet.publisher.cli_common import (
    EXIT_CANARY_ABORTED,
    EXIT_CODES,
    EXIT_INVALID,
    EXIT_PREFLIGHT,
    EXIT_UNREACHABLE,
)
from tests.helpers import REPO
from tests.publisher.kit import FLEET, retained

BAD_FLEET = """\
regions:
  us.east:
    timezone: Mars/Olympus
    servers: [{host: ntp1.example.net, port: 70000}]
"""


def dead_broker() -> list[str]:
    return ["--broker", f"mqtt://127.0.0.1:{devstack.free_port()}"]


def one_json(out: str) -> dict:
    """stdout holds exactly one JSON object and nothing else."""
    lines = out.splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0])


@pytest.fixture
def silent() -> Iterator[tuple[str, int]]:
    s: socket.socket = devstack.silent_udp()
    yield s.getsockname()[:2]
    s.close()


def test_check_accepts_the_example_fleet_file_without_any_broker(capsys):
    """A dead broker address: --check must not even try it (CI has no broker)."""
    assert (
        publish_main(["--check", "--config", str(REPO / "config/fleet.yaml"), *dead_broker()]) == 0
    )
    out = capsys.readouterr().out
    assert "config/fleet.yaml: valid: 2 region lists and 2 profiles; no broker contacted" in out


def test_check_lists_every_problem_of_a_bad_file_and_exits_2(tmp_path: Path, capsys):
    config = tmp_path / "fleet.yaml"
    config.write_text(BAD_FLEET)
    assert publish_main(["--check", "--config", str(config)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "regions.us.east: region id 'us.east' must match" in err
    assert "regions.us.east.servers[0].port: 70000 is outside 1..65535" in err
    assert "Mars/Olympus" in err


def test_check_json_names_the_regions_and_profiles_the_file_holds(tmp_path: Path, capsys):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    assert publish_main(["--check", "--json", "--config", str(config)]) == 0
    doc = one_json(capsys.readouterr().out)
    assert (doc["schema"], doc["mode"], doc["outcome"], doc["exit_code"]) == (
        "clockfleet-publish/1",
        "check",
        "ok",
        0,
    )
    assert doc["regions"] == ["eu-west", "us-east"]
    assert doc["profiles"] == ["acme-01", "globex-02"]


def test_check_json_of_a_bad_file_carries_each_problem(tmp_path: Path, capsys):
    config = tmp_path / "fleet.yaml"
    config.write_text(BAD_FLEET)
    assert publish_main(["--check", "--json", "--config", str(config)]) == EXIT_INVALID
    captured = capsys.readouterr()
    doc = one_json(captured.out)
    assert doc["outcome"] == "invalid" and doc["error"].endswith("nothing published")
    assert len(doc["problems"]) == 3
    assert all(p.startswith(f"{config}:") for p in doc["problems"])
    assert doc["problems"][0] in captured.err  # the person's lines are on stderr as before


def test_json_publish_then_unchanged_reports_each_change_and_its_acknowledgement(
    broker: ShippedBroker, fleet, publish
):
    fleet()
    doc = one_json(publish("--json").out)
    assert (doc["mode"], doc["outcome"], doc["broker_protocol"]) == ("publish", "ok", "MQTT 5")
    assert doc["counts"]["publish"] == 4
    assert {(c["kind"], c["id"], c["sent"]) for c in doc["changes"]} == {
        ("region", "us-east", True),
        ("region", "eu-west", True),
        ("profile", "acme-01", True),
        ("profile", "globex-02", True),
    }
    assert any(line.startswith("4 sent, 0 failed") for line in doc["lines"])
    again = one_json(publish("--json", "--dry-run").out)
    assert again["mode"] == "dry-run" and again["counts"]["unchanged"] == 4
    assert all(c["action"] == "unchanged" and c["sent"] is None for c in again["changes"])


def test_json_of_a_refused_publish_says_which_entries_the_broker_refused(
    broker: ShippedBroker, fleet, publish
):
    fleet()
    run = publish("--json", identity="acme-01")
    doc = one_json(run.out)
    assert (run.rc, doc["outcome"]) == (1, "broker-refused")
    assert doc["changes"] and all(c["sent"] is False for c in doc["changes"])
    assert all("Not authorized" in c["refused"] for c in doc["changes"])
    assert retained(broker) == {}


def test_json_of_an_unreachable_broker_exits_5_with_the_reason(fleet, capsys):
    code = publish_main(["--json", "--config", str(fleet()), *dead_broker()])
    doc = one_json(capsys.readouterr().out)
    assert code == EXIT_UNREACHABLE
    assert doc["outcome"] == "broker-unreachable" and "cannot connect" in doc["error"]


def test_json_of_a_failed_preflight_exits_4_and_holds_the_preflight_lines(
    broker: ShippedBroker, fleet, publish, silent
):
    host, port = silent
    servers = f"[{{host: '{host}', port: {port}}}]"
    fleet(f"regions:\n  us-east:\n    timezone: UTC\n    servers: {servers}\n")
    run = publish("--json", preflight=True)
    doc = one_json(run.out)
    assert run.rc == EXIT_PREFLIGHT and doc["outcome"] == "preflight-failed"
    assert any(f"{host}:{port}  timeout" in line for line in doc["lines"])
    assert retained(broker) == {}


def test_the_installed_command_prints_only_json_on_stdout(tmp_path: Path):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "clockfleet",
            "publish",
            "--check",
            "--json",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert one_json(done.stdout)["outcome"] == "ok"


def test_every_exit_code_is_in_the_help_and_in_docs_publisher_md(capsys):
    assert publish_main(["--help"]) == 0
    helptext = capsys.readouterr().out
    doc = (REPO / "docs/publisher.md").read_text()
    table = doc[doc.index("## Exit codes") :]
    rows = dict(re.findall(r"^\| (\d) \| `([a-z-]+)` \|", table, re.M))
    assert rows == {str(code): name for code, (name, _) in EXIT_CODES.items()}
    for code, (name, _) in EXIT_CODES.items():
        assert f"  {code} {name}: " in helptext
    assert rollout_run.EXIT_ABORTED == EXIT_CANARY_ABORTED
