"""The agent's package reads as its own: it imports only the protocol package and itself,
and no module grows past about 400 lines without saying why at its top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "agent" / "clockfleet" / "agent"
MODULES = sorted(ROOT.glob("*.py"))


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return {n for n in names if n.startswith("clockfleet")}


def test_the_agent_imports_only_the_protocol_package_and_itself():
    outside = {
        (p.name, name)
        for p in MODULES
        for name in imported(p)
        if not name.startswith(("clockfleet.protocol", "clockfleet.agent"))
    }
    assert outside == set()


def test_a_module_over_400_lines_says_why_at_its_top():
    for p in MODULES:
        text = p.read_text()
        if text.count("\n") > 400:
            doc = ast.get_docstring(ast.parse(text)) or ""
            assert "400 lines" in doc, f"{p.name}: {text.count(chr(10))} lines, no reason given"


def test_the_package_version_is_the_projects():
    from clockfleet.protocol.version import __version__

    pyproject = (ROOT.parents[2] / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject
