"""The collector's code keeps to its folder's rules: it imports only the protocol package and
its own modules, reaches into paho only in paho_socket.py, keeps modules small, and cites
no document outside the repository."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "collector" / "clockfleet" / "collector"
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
def test_the_collector_imports_of_clockfleet_only_the_protocol_and_its_own_package(path):
    ours = {n for n in imported(path) if n == "clockfleet" or n.startswith("clockfleet.")}
    allowed = ("clockfleet.protocol", "clockfleet.collector")
    assert [n for n in ours if not n.startswith(allowed)] == []


def private_attributes(path: Path) -> list[str]:
    """`x._name` where x is not self or cls: reaching into another object's internals."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            out.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return out


def test_only_paho_socket_reaches_into_another_objects_internals():
    found = [hit for path in MODULES for hit in private_attributes(path)]
    assert found and all(hit.startswith("paho_socket.py:") for hit in found), found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_collector_module_is_over_400_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_nothing_of_the_collector_cites_a_document_outside_the_repository():
    paths = [*MODULES, *(REPO / "config").rglob("*.*"), REPO / "docs" / "collector.md"]
    cited = [
        p.name
        for p in paths
        if p.is_file()
        and any(name in p.read_text() for name in ("design.md", "limits.md", "recipes.md"))
    ]
    assert cited == []
