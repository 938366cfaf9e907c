"""The house rules, for every file they name, with no escape hatch but a stated reason:

- a program imports of clockfleet only the protocol package, the NTP package and itself;
  the NTP package only the protocol and itself; nothing spells the id rule by hand;
- no Python module anywhere in the repository (programs, shared packages, devstack, bench,
  tests, packaging, config, scripts) is over 400 lines;
- in the programs and the shared packages: no class with more than 20 attributes and no
  function over 60 lines, unless a comment right above it says why (`# wide: ...` on a
  class, `# long: ...` on a function), for a reviewer to judge;
- no import circle (lazy imports inside functions count; imports for type checking only do
  not), and no private name (`_x`) imported from another module;
- nothing in the repository cites a document outside it.
"""

from __future__ import annotations

import ast
import re
import subprocess
from functools import cache
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
HOUSE = [*(p for _, p in MODULES), *SHARED]  # where class and function rules hold
MAX_LINES = 400
MAX_ATTRIBUTES = 20
MAX_FUNCTION_LINES = 60
OUTSIDE_DOCUMENTS = re.compile(r"\b(design|limits|recipes)\.md\b")
SOURCE_ROOTS = ("agent", "collector", "publisher", "devstack")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@cache
def tracked() -> tuple[Path, ...]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return tuple(REPO / p for p in out.split("\0") if p and (REPO / p).is_file())


def python_files() -> list[Path]:
    """Every tracked Python module, and every script whose first line runs Python."""

    def is_python_script(path: Path) -> bool:
        return not path.suffix and b"python" in path.read_bytes().split(b"\n", 1)[0][:80]

    return sorted(p for p in tracked() if p.suffix == ".py" or is_python_script(p))


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


# --- what a program may import --------------------------------------------------------------


@pytest.mark.parametrize("item", MODULES, ids=lambda i: f"{i[0]}/{i[1].name}")
def test_a_program_imports_of_clockfleet_only_the_protocol_the_ntp_and_its_own_package(item):
    program, path = item
    allowed = ("clockfleet.protocol", "clockfleet.ntp", f"clockfleet.{program}")
    assert [n for n in imported(path) if not within(n, allowed)] == []


@pytest.mark.parametrize("path", sorted((REPO / "clockfleet" / "ntp").glob("*.py")), ids=rel)
def test_the_ntp_package_imports_of_clockfleet_only_the_protocol_and_itself(path):
    allowed = ("clockfleet.protocol", "clockfleet.ntp")
    assert [n for n in imported(path) if not within(n, allowed)] == []


@pytest.mark.parametrize("item", MODULES, ids=lambda i: f"{i[0]}/{i[1].name}")
def test_no_program_spells_the_id_pattern_by_hand(item):
    assert "A-Za-z0-9_-" not in item[1].read_text()


# --- sizes ----------------------------------------------------------------------------------


def test_no_python_module_in_the_repository_is_over_400_lines():
    over = {rel(p): n for p in python_files() if (n := len(p.read_text().splitlines())) > 400}
    assert over == {}


def reason_above(path: Path, node: ast.AST, word: str) -> bool:
    """A `# word: reason` comment in the comment lines right above the definition (or its
    decorators)."""
    lines = path.read_text().splitlines()
    i = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))]) - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        text = lines[i].strip()
        if text.startswith(f"# {word}:") and len(text) > len(f"# {word}:") + 10:
            return True
        i -= 1
    return False


def attributes(cls: ast.ClassDef) -> set[str]:
    """Its fields (annotated names in the class body) and every `self.x` it assigns."""
    names = {
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    for node in ast.walk(cls):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, (ast.AnnAssign, ast.AugAssign))
            else []
        )
        for target in targets:
            for t in ast.walk(target):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name):
                    names.update([t.attr] if t.value.id == "self" else [])
    return names


def oversized() -> tuple[list[str], list[str]]:
    wide, long = [], []
    for path in HOUSE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                n = len(attributes(node))
                if n > MAX_ATTRIBUTES and not reason_above(path, node, "wide"):
                    wide.append(f"{rel(path)}: class {node.name}: {n} attributes")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES and not reason_above(path, node, "long"):
                    long.append(f"{rel(path)}: {node.name}(): {n} lines")
    return wide, long


def test_no_class_in_the_programs_has_more_than_20_attributes_without_a_reason():
    assert oversized()[0] == []


def test_no_function_in_the_programs_is_over_60_lines_without_a_reason():
    assert oversized()[1] == []


# --- imports between modules --------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).parts)
    if parts[0] in SOURCE_ROOTS:
        parts = parts[1:]
    parts[-1] = parts[-1][:-3]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in python_files() if p.suffix == ".py"}
    return {m: p for m, p in found.items() if m.startswith("clockfleet")}


def runtime_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) for every import a run can execute (functions' too): what is imported
    only for type checking is left out."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for sub in ast.walk(node)
    }
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out += [(node.module, a.name) for a in node.names]
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for module, what in runtime_imports(path):
            if f"{module}.{what}" in mods:
                edges.add(f"{module}.{what}")
            elif module in mods:
                edges.add(module)
        graph[name] = edges - {name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_module_of_clockfleet_is_part_of_an_import_circle():
    assert [" -> ".join(c) for c in circles(import_graph())] == []


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_private_name_is_imported_from_another_module():
    private = [
        f"{rel(path)}: {module}.{name}"
        for path in python_files()
        if path.suffix == ".py"
        for module, name in runtime_imports(path)
        if module.startswith("clockfleet") and name.startswith("_") and not name.startswith("__")
    ]
    assert private == []


# --- documents ------------------------------------------------------------------------------


def test_nothing_in_the_repository_cites_a_document_outside_it():
    places = [
        *python_files(),
        *(REPO / "config").rglob("*.y*ml"),
        *(REPO / "docs").glob("*.md"),
        REPO / "Makefile",
        REPO / "README.md",
    ]
    assert [rel(p) for p in places if OUTSIDE_DOCUMENTS.search(p.read_text())] == []
