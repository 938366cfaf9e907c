"""Every program keeps to its folder's rules: it imports of clockfleet only the protocol
package, the NTP package (clockfleet.ntp, shared by the agent and the publisher) and its own
modules, keeps each module to about 400 lines (or says at its top why
not), spells the id rule only through `clockfleet.protocol.ids`, and nothing in the
repository cites a document outside it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import REPO

PROGRAMS = ("agent", "collector", "publisher")
MODULES = [
    (program, path)
    for program in PROGRAMS
    for path in sorted((REPO / program / "clockfleet" / program).glob("*.py"))
]
SHARED = sorted((REPO / "clockfleet").rglob("*.py"))
MAX_LINES = 400
OUTSIDE_DOCUMENTS = re.compile(r"\b(design|limits|recipes)\.md\b")


def ident(item: tuple[str, Path]) -> str:
    return f"{item[0]}/{item[1].name}"


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return {n for n in names if n == "clockfleet" or n.startswith("clockfleet.")}


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("item", MODULES, ids=ident)
def test_a_program_imports_of_clockfleet_only_the_protocol_the_ntp_and_its_own_package(item):
    program, path = item
    allowed = ("clockfleet.protocol", "clockfleet.ntp", f"clockfleet.{program}")
    assert [n for n in imported(path) if not within(n, allowed)] == []


NTP_MODULES = sorted((REPO / "clockfleet" / "ntp").glob("*.py"))


@pytest.mark.parametrize("path", NTP_MODULES, ids=lambda p: p.name)
def test_the_ntp_package_imports_of_clockfleet_only_the_protocol_and_itself(path):
    allowed = ("clockfleet.protocol", "clockfleet.ntp")
    assert [n for n in imported(path) if not within(n, allowed)] == []


@pytest.mark.parametrize("item", [*MODULES, *(("shared", p) for p in SHARED)], ids=ident)
def test_a_module_over_400_lines_says_why_at_its_top(item):
    _, path = item
    text = path.read_text()
    if len(text.splitlines()) > MAX_LINES:
        assert "400 lines" in (ast.get_docstring(ast.parse(text)) or ""), path.name


@pytest.mark.parametrize("item", MODULES, ids=ident)
def test_no_program_spells_the_id_pattern_by_hand(item):
    assert "A-Za-z0-9_-" not in item[1].read_text()


def test_nothing_in_the_repository_cites_a_document_outside_it():
    places = [
        *(p for _, p in MODULES),
        *SHARED,
        *(REPO / "devstack").rglob("*.py"),
        *(REPO / "bench").glob("*.py"),
        *(REPO / "config").rglob("*.y*ml"),
        *(REPO / "docs").glob("*.md"),
        REPO / "Makefile",
        REPO / "README.md",
    ]
    assert [
        str(p.relative_to(REPO)) for p in places if OUTSIDE_DOCUMENTS.search(p.read_text())
    ] == []
