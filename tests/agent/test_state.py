"""The state directory: atomic writes, tolerant reads, and the schedule's bounds."""

from __future__ import annotations

import json
import random
from pathlib import Path

from clockfleet.agent import schedule
from clockfleet.agent.state import Remembered, StateDir


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
    delays = {round(schedule.reconnect_delay(rng, 3, 1, 120), 3) for _ in range(50)}
    assert len(delays) > 40 and max(delays) <= 8
