"""clock.report/1 grows by optional fields only (docs/protocol.md, "How the contract
evolves"): a collector from before them accepts a report that carries them, and today's
collector accepts a report from before them. The old reader is the protocol package as it
was committed before the fields came (git), decoding in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clockfleet.protocol import codec
from clockfleet.protocol.messages import Report
from tests.helpers import REPO

# The last commit before `clock`, `timezone_expected`, `tzdata_version`, `utc_offset_s` and
# `zone_command` were added to clock.report/1.
BEFORE = "aa6fd17"
NEW_FIELDS = ("clock", "timezone_expected", "tzdata_version", "utc_offset_s", "zone_command")

OLD_REPORT = {
    "schema": "clock.report/1",
    "agent": "a1",
    "region": "eu-west",
    "list_version": 7,
    "ok": True,
    "server": {"host": "192.0.2.10", "port": 123},
    "offset_s": 2.0,
    "delay_s": 0.0004,
    "discipline": "chrony",
    "timezone": "Europe/Dublin",
    "at": "2026-12-07T12:00:00.000Z",
    "tried": [{"host": "192.0.2.10", "port": 123, "outcome": "ok"}],
}
NEW_REPORT = {
    **OLD_REPORT,
    "clock": {
        "kernel": {"synchronised": False, "maxerror_s": 16.0, "esterror_s": 16.0, "status": 64},
        "chrony": {
            "reference": "192.0.2.10",
            "stratum": 3,
            "system_time_s": -0.000001,
            "last_offset_s": -2.0,
            "rms_offset_s": 1.0,
            "frequency_ppm": 12.5,
            "skew_ppm": 0.3,
            "root_delay_s": 0.01,
            "root_dispersion_s": 0.001,
            "update_interval_s": 2.0,
            "leap": "normal",
        },
        "some_later_field": {"nested": [1, 2]},
    },
    "timezone_expected": "Europe/Dublin",
    "tzdata_version": "2019c",
    "utc_offset_s": 19800,
    "zone_command": {
        "timezone": "Europe/Dublin",
        "at": "2026-12-07T11:00:00.000Z",
        "timed_out": False,
        "duration_s": 0.2,
        "exit_code": 0,
    },
}

OLD_READER = """
import json, sys
from clockfleet.protocol import codec
from clockfleet.protocol.messages import Report
report, _ = codec.decode(Report, sys.stdin.buffer.read(), topic_id="a1", check_future=False)
known = "clock" in Report.__struct_fields__
print(json.dumps({"ok": report.ok, "offset_s": report.offset_s, "knows_clock": known}))
"""


@pytest.fixture(scope="module")
def old_protocol(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The protocol package of BEFORE, alone on a path of its own."""
    root = tmp_path_factory.mktemp("old-protocol")
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", BEFORE, "clockfleet/protocol/"],
        capture_output=True,
        text=True,
    )
    if listing.returncode != 0:
        pytest.skip(f"no git history here to take the old reader from: {listing.stderr.strip()}")
    (root / "clockfleet/protocol").mkdir(parents=True)
    for path in listing.stdout.split():
        if path.endswith(".py"):
            blob = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{BEFORE}:{path}"],
                capture_output=True,
                check=True,
            )
            (root / path).write_bytes(blob.stdout)
    return root


def old_decode(root: Path, body: dict) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", OLD_READER],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_the_old_reader_is_really_from_before_the_new_fields(old_protocol):
    old = (old_protocol / "clockfleet/protocol/messages.py").read_text()
    assert not any(f"    {field}:" in old for field in NEW_FIELDS)


def test_a_collector_from_before_accepts_a_report_with_the_new_fields(old_protocol):
    done = old_decode(old_protocol, NEW_REPORT)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"ok": True, "offset_s": 2.0, "knows_clock": False}


def test_todays_collector_accepts_a_report_from_before_with_none_of_them():
    report, _ = codec.decode(Report, json.dumps(OLD_REPORT).encode(), topic_id="a1")

    assert all(getattr(report, field) is None for field in NEW_FIELDS)


def test_todays_reader_ignores_fields_it_does_not_know_inside_the_new_objects():
    report, _ = codec.decode(Report, json.dumps(NEW_REPORT).encode(), topic_id="a1")

    assert report.clock is not None and report.clock.chrony is not None
    assert report.clock.chrony.last_offset_s == -2.0 and report.utc_offset_s == 19800


@pytest.mark.parametrize(
    "change",
    [
        {"utc_offset_s": 200_000},
        {"utc_offset_s": 1.5},
        {"tzdata_version": "2019c; rm"},
        {"timezone_expected": "Mars/Olympus"},
        {"clock": {"chrony": {**NEW_REPORT["clock"]["chrony"], "leap": "sideways"}}},
        {"zone_command": {**NEW_REPORT["zone_command"], "exit_code": True}},
    ],
    ids=["offset-range", "offset-float", "tzdata-text", "zone", "leap", "bool-exit"],
)
def test_a_new_field_out_of_its_bounds_refuses_the_whole_report(change):
    with pytest.raises(codec.Rejected):
        codec.decode(Report, json.dumps({**NEW_REPORT, **change}).encode(), topic_id="a1")
