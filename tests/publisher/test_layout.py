"""The publisher's code keeps to its folder's rules: it imports of clockfleet only the
protocol package and its own modules, keeps each module to one job of at most about 400
lines, spells the id rule only through `clockfleet.protocol.ids`, and cites no document
outside the repository."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "publisher" / "clockfleet" / "publisher"
MODULES = sorted(PACKAGE.glob("*.py"))
MAX_LINES = 400


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_the_publisher_imports_of_clockfleet_only_the_protocol_and_its_own_package(path):
    ours = {n for n in imported(path) if n == "clockfleet" or n.startswith("clockfleet.")}
    allowed = ("clockfleet.protocol", "clockfleet.publisher")
    assert [n for n in ours if not n.startswith(allowed)] == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_publisher_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_publisher_module_spells_the_id_pattern_by_hand(path):
    assert "A-Za-z0-9_-" not in path.read_text()


def test_nothing_of_the_publisher_cites_a_document_outside_the_repository():
    paths = [*MODULES, REPO / "docs" / "publisher.md"]
    cited = [p.name for p in paths if "design.md" in p.read_text() or "limits.md" in p.read_text()]
    assert cited == []
