"""docs/operations.md's "An operator's day" is the day tests/hosts/test_operators_day.py walks:
the same steps, titled the same, in the same order."""

from __future__ import annotations

import re

from tests.helpers import REPO
from tests.hosts.test_operators_day import STEPS


def runbook_steps() -> list[str]:
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("\n## An operator's day\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\d+\. \*\*(.+?)\.\*\*", section, flags=re.MULTILINE)


def test_the_operators_day_runbook_lists_the_tested_steps_in_order():
    assert runbook_steps() == list(STEPS)
