"""How the demo judges the fleet at the end of a `DEMO_FOR` run, and reads its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from clockfleet.demo import settings_from_env
from clockfleet.demo_view import (
    Row,
    View,
    plain_table,
    problems,
    view_from_status_json,
    with_tried,
)


def _view(*rows: Row, published: dict[str, int]) -> View:
    return View({r.agent: r for r in rows}, published)


def test_no_problems_when_every_agent_synced_on_its_region_latest_list():
    view = _view(
        Row("a1", "r1", ok=True, list_version=7),
        Row("a2", "r2", ok=True, list_version=3),
        published={"r1": 7, "r2": 3},
    )
    assert problems(view, ["a1", "a2"]) == []


def test_an_agent_on_an_older_list_is_named_with_both_versions():
    view = _view(Row("a1", "r1", ok=True, list_version=6), published={"r1": 7})
    assert problems(view, ["a1"]) == ["a1: reported list version 6, latest is 7"]


def test_a_failed_sync_is_named_with_what_was_tried():
    row = Row("a1", "r1", ok=False, list_version=7, tried=(("h:123", "timeout"),))
    assert problems(_view(row, published={"r1": 7}), ["a1"]) == [
        "a1: last sync failed (tried: h:123 timeout)"
    ]


def test_an_agent_that_never_reported_is_named():
    assert problems(_view(published={"r1": 7}), ["a1"]) == ["a1: no report"]


def test_status_json_rows_become_the_view_with_published_versions():
    rows = [
        {
            "agent": "a1",
            "region": "r1",
            "state": "online",
            "published_version": 8,
            "list_version": 7,
            "ok": True,
            "server": "127.0.0.1:123",
            "offset_s": 0.5,
        }
    ]
    view = view_from_status_json(rows)
    assert view.published == {"r1": 8}
    assert view.rows["a1"].server == "127.0.0.1:123"
    assert problems(view, ["a1"]) == ["a1: reported list version 7, latest is 8"]


def test_tried_list_comes_from_the_agent_report_only_when_it_is_the_same_report():
    view = _view(Row("a1", "r1", ok=True, list_version=7), published={"r1": 7})
    tried = [{"host": "h", "port": 1, "outcome": "ok"}]
    same = with_tried(view, {"a1": {"list_version": 7, "ok": True, "tried": tried}})
    older = with_tried(view, {"a1": {"list_version": 6, "ok": True, "tried": tried}})
    assert same.rows["a1"].tried == (("h:1", "ok"),)
    assert older.rows["a1"].tried == ()


def test_change_must_come_before_the_end_of_a_timed_run():
    with pytest.raises(SystemExit, match="must be less than DEMO_FOR"):
        settings_from_env({"DEMO_FOR": "10", "DEMO_CHANGE_AFTER": "10"})


def test_timed_run_changes_the_list_within_its_window_by_default(tmp_path: Path):
    s = settings_from_env({"DEMO_FOR": "30", "DEMO_RUNDIR": str(tmp_path)})
    assert s.run_for == 30 and s.change_after == 12 and s.rundir == tmp_path
    assert not s.interactive


def test_the_agent_report_note_is_shown_with_its_tried_list():
    view = _view(Row("a1", "r1", ok=True, list_version=7), published={"r1": 7})
    report = {
        "list_version": 7,
        "ok": True,
        "tried": [{"host": "h", "port": 1, "outcome": "ok"}],
        "note": "single server: offset +3.000000 s applied unconfirmed",
    }
    row = with_tried(view, {"a1": report}).rows["a1"]
    assert row.note.startswith("single server")
    assert "single server" in plain_table(View({"a1": row}, {"r1": 7}))
