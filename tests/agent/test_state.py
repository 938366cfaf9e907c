"""The state directory: atomic writes, tolerant reads, and the schedule's bounds."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

from clockfleet.agent import schedule
from clockfleet.agent.state import LastGood, Remembered, StateDir, local_status, residual_offset
from clockfleet.protocol.messages import Report, Server
from clockfleet.protocol.session import backoff_delay


def test_remembered_facts_survive_a_round_trip(tmp_path: Path):
    st = StateDir(tmp_path / "state")
    st.save_remembered(Remembered(session=7, list_versions={"r1": 5}, profile_version=2))
    back = st.load_remembered()
    assert (back.session, back.list_versions, back.profile_version) == (7, {"r1": 5}, 2)


def test_writes_leave_no_temporary_files_behind(tmp_path: Path):
    st = StateDir(tmp_path)
    st.save_list_payload(b"one")
    st.save_list_payload(b"two")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json"]
    assert st.load_list_payload() == b"two"


def test_a_corrupt_state_file_starts_from_scratch_instead_of_crashing(tmp_path: Path):
    (tmp_path / "state.json").write_text("{not json")
    assert StateDir(tmp_path).load_remembered() == Remembered()


def test_ill_typed_versions_in_the_state_file_are_dropped(tmp_path: Path):
    (tmp_path / "state.json").write_text(
        json.dumps({"session": "x", "list_versions": {"r1": True, "r2": 4}})
    )
    r = StateDir(tmp_path).load_remembered()
    assert (r.session, r.list_versions) == (0, {"r2": 4})


def test_an_unwritable_state_dir_is_logged_not_fatal(tmp_path: Path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    StateDir(blocker / "sub").save_report(b"{}")  # parent is a file: cannot mkdir
    assert "cannot write state" in caplog.text


def test_poll_is_never_more_often_than_16_seconds():
    rng = random.Random(1)
    assert min(schedule.poll_delay(rng, 16) for _ in range(1000)) >= 16


def test_retry_backoff_grows_and_is_capped():
    rng = random.Random(1)
    first = [schedule.retry_delay(rng, 1, 16, 1024) for _ in range(200)]
    tenth = [schedule.retry_delay(rng, 10, 16, 1024) for _ in range(200)]
    assert min(first) >= 8 and max(first) <= 16
    assert min(tenth) >= 512 and max(tenth) <= 1024


def test_zero_jitter_means_at_once():
    assert schedule.resync_delay(random.Random(), 0) == 0.0
    assert schedule.startup_delay(random.Random(), 0) == 0.0


def test_reconnects_are_jittered():
    rng = random.Random(1)
    delays = {round(backoff_delay(3, 1, 120, rng), 3) for _ in range(50)}
    assert len(delays) > 40 and max(delays) <= 8


# --- status.json: when is the clock trustworthy? ---------------------------------------------

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def report(ok: bool = True, offset_s: float = 0.001, discipline: str = "observe") -> Report:
    return Report(
        schema="clock.report/1",
        agent="a1",
        region="r1",
        list_version=4,
        ok=ok,
        discipline=discipline if ok else "none",  # type: ignore[arg-type]
        at=NOW,
        tried=[],
        server=Server("192.0.2.1", 123) if ok else None,
        offset_s=offset_s if ok else None,
        delay_s=0.001 if ok else None,
        error=None if ok else "every server timed out",
    )


def status(rep: Report | None, good: Report | None, age_s: float, poll_s: float = 60) -> dict:
    last = LastGood(1000.0 - age_s, residual_offset(good), good) if good else None
    return local_status(
        agent="a1",
        region="r1",
        report=rep,
        last_good=last,
        poll_interval_s=poll_s,
        trust_offset_s=0.5,
        timezone="UTC",
        counters={"replay": 2},
        now=NOW,
        monotonic=1000.0,
    )


def test_a_recent_good_sync_is_trustworthy_until_twice_the_poll_interval():
    good = report()
    s = status(good, good, age_s=30)
    assert s["trustworthy"] is True and "reason" not in s
    assert s["valid_until"] == "2026-11-26T12:01:30.000Z"  # 2 x 60 s - 30 s from now
    assert s["counters"] == {"replay": 2}


def test_a_stale_good_sync_is_not_trustworthy():
    good = report()
    s = status(good, good, age_s=121)
    assert s["trustworthy"] is False
    assert "last good sync 121 s ago" in s["reason"]


def test_a_large_offset_left_by_observing_is_not_trustworthy_but_a_step_removes_it():
    far = report(offset_s=2.0)
    assert "exceeds 0.5 s" in status(far, far, age_s=1)["reason"]
    stepped = report(offset_s=2.0, discipline="system-step")
    assert status(stepped, stepped, age_s=1)["trustworthy"] is True


def test_a_failed_sync_after_a_recent_good_one_stays_trustworthy_with_a_note():
    s = status(report(ok=False), report(), age_s=10)
    assert s["trustworthy"] is True
    assert s["synced"] is False
    assert "every server timed out" in s["note"]


def test_never_synced_says_why():
    assert status(None, None, age_s=0)["reason"] == "never synced"
    assert status(report(ok=False), None, age_s=0)["reason"] == "every server timed out"
