"""A zone change's canary on the wire: `zone_canary` in clock.servers/1, what the strict
decoder refuses, what agents that predate it do with it (ignore it: they keep the list's
zone and take the one their profile names), and how one cohort report is judged."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import msgspec
import pytest

from clockfleet.agent.report import job_for
from clockfleet.collector.fleet_state import FleetState
from clockfleet.collector.rollout_metrics import rollout_families
from clockfleet.protocol import codec, rollout, signing, zone_trial
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.messages import Report, ServerList, ZoneCommand
from tests.agent.servicekit import list_object, make_keys
from tests.helpers import REPO

SERVERS = [("127.0.0.2", 123)]
CHANGE = "z7-0d1e2f3a"
# The protocol package before zone_canary (it knows `canary`), and before canaries at all.
BEFORE_ZONE_CANARY = "35adaae"
BEFORE_CANARIES = "466a4d2"
WINTER = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def zone_canary(zone: str = "Asia/Kolkata", percent: float = 10) -> dict:
    return {
        "id": CHANGE,
        "percent": percent,
        "timezone": zone,
        "bake_s": 60,
        "max_failing_pct": 10,
        "min_reported_pct": 80,
    }


def zone_list(**extra) -> dict:
    return list_object("r1", 7, SERVERS, timezone="Europe/Dublin", **extra)


def decode(obj: dict) -> ServerList:
    sl, _ = codec.decode(ServerList, json.dumps(obj).encode(), topic_id="r1")
    return sl


def test_a_zone_canary_decodes_and_names_the_change():
    sl = decode(zone_list(zone_canary=zone_canary()))

    assert rollout.trial(sl) == sl.zone_canary and sl.zone_canary is not None
    assert (sl.timezone, sl.zone_canary.timezone) == ("Europe/Dublin", "Asia/Kolkata")


@pytest.mark.parametrize(
    "obj, reason",
    [
        (zone_list(zone_canary=zone_canary("Mars/Olympus_Mons")), "bad-timezone"),
        (zone_list(zone_canary=zone_canary("../../etc/passwd")), "bad-timezone"),
        (zone_list(zone_canary=zone_canary("Europe/Dublin")), "invalid-field"),
        (zone_list(zone_canary=zone_canary(percent=0)), "invalid-field"),
        (
            zone_list(
                zone_canary=zone_canary(),
                canary={
                    "id": "c7-00000000",
                    "percent": 10,
                    "servers": [{"host": "127.0.0.3", "port": 123}],
                    "bake_s": 60,
                    "max_failing_pct": 10,
                    "min_reported_pct": 80,
                    "offset_tolerance_s": 0.5,
                },
            ),
            "invalid-field",
        ),
    ],
    ids=["unknown-zone", "path", "same-zone", "zero-percent", "beside-a-canary"],
)
def test_a_bad_zone_canary_refuses_the_whole_list(obj, reason):
    with pytest.raises(Rejected) as exc:
        decode(obj)
    assert exc.value.reason == reason


def test_a_tampered_zone_canary_fails_the_signature(tmp_path: Path):
    keys = make_keys(tmp_path)
    signed = signing.sign(zone_list(zone_canary=zone_canary()), keys.key)
    signed["zone_canary"]["timezone"] = "America/Chicago"
    with pytest.raises(Rejected) as exc:
        signing.verify(signed, keys.trust)
    assert exc.value.reason == "bad-signature"


@pytest.mark.parametrize("agent", ["pbx-000", "pbx-001", "pbx-002", "pbx-003"])
def test_todays_agent_takes_no_zone_and_no_servers_from_a_zone_canary(agent):
    """Cohort or not, the agent probes the list's servers, reports no cohort, and asks for
    the list's zone when no profile names one: the cohort's zone travels in profiles."""
    sl = decode(zone_list(zone_canary=zone_canary(percent=50)))

    job = job_for(agent, sl, None, sl.timezone, False)

    assert [(s.host, s.port) for s in job.server_list.servers] == SERVERS
    assert (job.cohort, job.timezone) == (None, "Europe/Dublin")


OLD_READER = """
import json, sys
from pathlib import Path
from clockfleet.protocol import codec, signing
from clockfleet.protocol.messages import ServerList
payload = sys.stdin.buffer.read()
sl, obj = codec.decode(ServerList, payload, topic_id="r1")
signed_by = signing.verify(obj, signing.load_trust([Path(sys.argv[1])]))
try:
    from clockfleet.protocol import rollout
    servers, side = rollout.servers_for(sl, "pbx-000")
except ImportError:  # before canaries
    servers, side = sl.servers, None
print(json.dumps({"timezone": sl.timezone, "servers": [[s.host, s.port] for s in servers],
                  "side": side, "signed_by": signed_by,
                  "knows_zone_canary": "zone_canary" in ServerList.__struct_fields__}))
"""


def old_protocol(root: Path, commit: str) -> Path:
    """The protocol package as committed at `commit`, alone under `root`."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", commit, "clockfleet/protocol/"],
        capture_output=True,
        text=True,
    )
    if listing.returncode != 0:
        pytest.skip(f"no git history here to take the old reader from: {listing.stderr.strip()}")
    (root / "clockfleet/protocol").mkdir(parents=True)
    for path in listing.stdout.split():
        if path.endswith(".py"):
            blob = ["git", "-C", str(REPO), "show", f"{commit}:{path}"]
            (root / path).write_bytes(subprocess.run(blob, capture_output=True, check=True).stdout)
    return root


@pytest.mark.parametrize("commit", [BEFORE_ZONE_CANARY, BEFORE_CANARIES])
def test_an_agent_that_predates_zone_canaries_keeps_the_current_zone_and_servers(
    commit, tmp_path: Path
):
    keys = make_keys(tmp_path / "keys")
    payload = json.dumps(signing.sign(zone_list(zone_canary=zone_canary(percent=100)), keys.key))
    root = old_protocol(tmp_path / "old", commit)

    done = subprocess.run(
        [sys.executable, "-c", OLD_READER, str(keys.pub)],
        input=payload,
        capture_output=True,
        text=True,
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "timezone": "Europe/Dublin",  # the current zone: a 100 % cohort changes nothing here
        "servers": [list(s) for s in SERVERS],
        "side": None,
        "signed_by": "ops-test",
        "knows_zone_canary": False,
    }


def report(**fields) -> Report:
    base = {
        "schema": "clock.report/1", "agent": "pbx-000", "region": "r1", "list_version": 7,
        "ok": True, "server": {"host": "127.0.0.2", "port": 123}, "offset_s": 0.001,
        "delay_s": 0.0002, "discipline": "observe", "at": WINTER.isoformat(), "tried": [],
        "timezone": "Asia/Kolkata", "timezone_expected": "Asia/Kolkata",
        "utc_offset_s": 19800, "tzdata_version": "2026b",
    }  # fmt: skip
    base.update(fields)
    r, _ = codec.decode(Report, json.dumps(base).encode(), topic_id=base["agent"])
    return r


ZC = decode(zone_list(zone_canary=zone_canary())).zone_canary


def command(**fields) -> dict:
    return {
        "timezone": "Asia/Kolkata", "at": WINTER.isoformat(), "timed_out": False,
        "duration_s": 0.1, "exit_code": 0, **fields,
    }  # fmt: skip


@pytest.mark.parametrize(
    "fields, verdict",
    [
        ({}, "ok"),
        ({"zone_command": command()}, "ok"),
        ({"timezone_expected": "Europe/Dublin", "timezone": "Europe/Dublin"}, None),
        (
            {"timezone": "Europe/Dublin", "error": "time zone Asia/Kolkata not set: no file"},
            "zone Asia/Kolkata not applied, the host has Europe/Dublin: time zone "
            "Asia/Kolkata not set: no file",
        ),
        (
            {"utc_offset_s": 0, "tzdata_version": "2019c"},
            "the host's rules give Asia/Kolkata UTC+00:00, not UTC+05:30 (tzdata 2019c)",
        ),
        ({"utc_offset_s": None}, "the host's zone file for Asia/Kolkata is unreadable"),
        (
            {"zone_command": command(exit_code=1, error="pbx reload failed")},
            "zone_change_command failed (exit code 1): pbx reload failed",
        ),
        (
            {"zone_command": command(timed_out=True, exit_code=None, duration_s=30.0)},
            "zone_change_command timed out after 30 s",
        ),
        ({"timezone_expected": None, "utc_offset_s": None}, zone_trial.NO_EVIDENCE),
    ],
    ids=[
        "applied",
        "command-ok",
        "profile-not-yet",
        "not-applied",
        "other-rules",
        "unreadable",
        "command-failed",
        "command-timed-out",
        "no-evidence",
    ],
)
def test_a_cohort_report_is_judged_by_its_zone(fields, verdict):
    assert zone_trial.verdict(ZC, report(**fields)) == verdict


def test_a_zone_change_is_not_judged_by_the_sync():
    """A zone-only change must not abort because an NTP server is down."""
    failed = report(ok=False, server=None, offset_s=None, delay_s=None, error="all timed out")
    assert zone_trial.verdict(ZC, failed) == "ok"


def test_only_the_agents_that_take_the_regions_zone_are_in_its_cohort():
    sl = decode(zone_list(zone_canary=zone_canary(percent=100)))
    reports = {
        "follows": report(agent="follows"),
        "own-zone": report(agent="own-zone", timezone="America/Chicago",
                           timezone_expected="America/Chicago", utc_offset_s=-21600),
    }  # fmt: skip
    placed = {"follows": "r1", "own-zone": "r1"}

    by_file = rollout.health(sl, reports, {}, placed, followers={"follows"})
    by_reports = rollout.health(sl, reports, {})

    assert by_file.cohort == by_reports.cohort == ["follows"]
    assert by_file.ok == ["follows"] and by_file.region_agents == 2


def test_an_old_zone_command_does_not_judge_the_new_zone():
    old_cmd = ZoneCommand(timezone="Europe/Dublin", at=WINTER, timed_out=True, duration_s=30.0)
    r = report()
    r.zone_command = old_cmd
    assert zone_trial.verdict(ZC, r) == "ok"


def test_the_collector_exports_a_zone_canarys_phase_and_cohort():
    """Without a fleet file: the cohort is the agents whose reports asked for the old or the
    new zone (one ok on Kolkata, one still waiting on Dublin); one with its own zone is out."""
    state = FleetState(prefix="clock/v1")
    listed = zone_list(zone_canary=zone_canary(percent=100))
    state.ingest("clock/v1/regions/r1/servers", json.dumps(listed).encode())
    waiting = {"timezone": "Europe/Dublin", "timezone_expected": "Europe/Dublin", "utc_offset_s": 0}
    own = {"timezone": "America/Chicago", "timezone_expected": "America/Chicago"}
    for agent, fields in (("a-ok", {}), ("a-waiting", waiting), ("a-own", own)):
        body = {**msgspec.to_builtins(report(agent=agent, **fields)), "agent": agent}
        state.ingest(f"clock/v1/agents/{agent}/report", json.dumps(body).encode())

    families = {f.name: dict(f.samples) for f in rollout_families(state, WINTER.timestamp())}

    assert families["clockfleet_rollout_phase"][("r1", "canary")] == 1
    cohort = families["clockfleet_rollout_cohort_agents"]
    assert (cohort[("r1", "ok")], cohort[("r1", "missing")], cohort[("r1", "failing")]) == (1, 1, 0)
    assert families["clockfleet_rollout_bake_remaining_seconds"][("r1",)] >= 0
