"""What counts as evidence that this host's clock is behind (the only thing that may waive a
certificate's dates): a time the host knows has passed, read a day or more ahead."""

from __future__ import annotations

from clockfleet.agent.clock_evidence import SLACK_S, Floor, behind_evidence, release_floor

DAY = 86400.0
ISSUED = Floor(1_800_000_000.0, "the issue time of list v7")


def test_a_clock_after_every_floor_has_no_evidence_against_it():
    assert behind_evidence(ISSUED.at + 60, [release_floor(), ISSUED]) is None


def test_a_clock_a_few_hours_before_a_list_issue_time_is_not_evidence():
    """A publisher's clock a little ahead must not read as proof."""
    assert behind_evidence(ISSUED.at - SLACK_S + 1, [ISSUED]) is None


def test_a_clock_days_before_the_latest_floor_is_provably_behind_and_says_why():
    why = behind_evidence(ISSUED.at - 400 * DAY, [release_floor(), ISSUED])
    assert why is not None
    assert "400 days before the issue time of list v7" in why


def test_the_latest_floor_is_the_one_that_counts():
    older = Floor(ISSUED.at - 30 * DAY, "this host's last good sync")
    why = behind_evidence(ISSUED.at - 10 * DAY, [older, ISSUED])
    assert why is not None and "list v7" in why


def test_the_release_date_alone_proves_a_clock_stuck_in_2000():
    assert behind_evidence(946684800.0, [release_floor()]) is not None
