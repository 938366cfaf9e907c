"""The collector reaches into paho's internals only in paho_socket.py (the rules every
program keeps are in tests/test_layout.py)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "collector" / "clockfleet" / "collector"
MODULES = sorted(PACKAGE.glob("*.py"))


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
