"""The documentation cites only what exists, has a module table for every package, and holds
no path of the machine it was written on.

The documents are every tracked file named `*.md` or `README*` (README.md, docs/*.md,
broker/README.md, broker/nats/README.md, packaging/debian/README.Debian, BENCHMARKS.md, ...).
tests/test_readme.py checks the README's commands, names and its own narrower set of paths;
this file holds every document to the rules below.

**A cited repository path** is a word in a document's code: an inline `code` span, a fenced
block, or a line indented by four or more spaces (Markdown's indented code; list items
indented that far are read too); in a file that is not Markdown (README.Debian), every line.
The word starts with one of the repository's top-level folders and a `/` (TOP_FOLDERS:
`agent/`, `broker/`, ...), or is spelled like a top-level file (TOP_FILE: `Makefile`,
`Dockerfile`, `pyproject.toml`, `compose*.yaml`, an upper-case `NAME.md`). It must begin the
word: never after `/`, `.`, `$`, `~`, `@`, `%`, `-` or a letter, so host paths
(/etc/clockfleet/agent.yaml, /opt/clockfleet/bin/pip) and placeholders (NAME.password,
RUNDIR/logs/, DIR/passwd) are not repository paths. It ends before a space, quote or `:` (a
test's `path::name`), and trailing `.,;)` is punctuation. `*`, `<placeholder>` and
`{placeholder}` are wildcards: the word must match at least one file. A link target
`[...](target)` with no scheme is a path relative to the document's folder, and its
`#anchor` must be a heading of the target (GitHub's anchor rule).

**A cited module** is a word in a document's code spelled `clockfleet.a.b` (beginning a word
as above). Its longest prefix that is a module or package of a source root (`.`, `agent/`,
`collector/`, `publisher/`, `devstack/`) must exist, and what follows it must be defined there:
`clockfleet.ntp.checks.ProbeSettings` needs a top-level ProbeSettings in clockfleet/ntp/checks.py
(and a second name, a member of that class).

**A module table** is a Markdown table whose first column is headed `module`; it describes the
folder that the nearest heading above it names in backticks, and lists every module (`*.py`
but `__init__.py`) of that folder, no more and no fewer. So the one-line tables in
docs/architecture.md must list all of the collector's and the publisher's modules as the full
tables in docs/collector.md and docs/publisher.md do. PACKAGES are the folders that must have
a table: the programs, the shared packages, the dispatcher and the devstack.

**A machine path** is a home directory (/home/USER/..., /Users/USER/..., /root/...), anything
under /tmp/ or /work/: a document or a generated file (GENERATED) holding one was written with
the author's machine in it. /tmp/clockfleet-try is the README's throw-away state directory for
trying `--once`, an instruction rather than a trace (EXAMPLE_PATHS).
"""

from __future__ import annotations

import ast
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.helpers import REPO

TOP_FOLDERS = (
    "agent",
    "bench",
    "broker",
    "clockfleet",
    "collector",
    "config",
    "deploy",
    "devstack",
    "docs",
    "packaging",
    "publisher",
    "schemas",
    "scripts",
    "tests",
)
TOP_FILE = (
    r"(?:Makefile|Dockerfile|pyproject\.toml|compose(?:\.[\w-]+)?\.ya?ml|[A-Z][A-Z0-9_]*\.md)"
)
BEGINS = r"(?<![\w./$~@%-])"
PATH_WORD = re.compile(
    BEGINS + rf"(?:(?:{'|'.join(TOP_FOLDERS)})/[\w./*<>{{}}+-]*|{TOP_FILE}(?![\w.-]))"
)
MODULE_WORD = re.compile(BEGINS + r"clockfleet(?:\.[A-Za-z_*][\w*]*)+")
SOURCE_ROOTS = (REPO, REPO / "agent", REPO / "collector", REPO / "publisher", REPO / "devstack")

PACKAGES = (
    "clockfleet",
    "clockfleet/protocol",
    "clockfleet/ntp",
    "agent/clockfleet/agent",
    "collector/clockfleet/collector",
    "publisher/clockfleet/publisher",
    "devstack/clockfleet/devstack",
    "devstack/clockfleet",
)

MACHINE_PATH = re.compile(r"(?<![\w.-])(?:/(?:home|Users)/[\w.-]+|/root/|/tmp/|/work/)[^\s`'\")]*")
EXAMPLE_PATHS = {"/tmp/clockfleet-try"}
GENERATED = (
    "BENCHMARKS.md",
    "bench/results.json",
    "config/grafana/dashboards/clockfleet.json",
    "broker/nats/security.conf.example",
)

# Problems in files this suite's owner does not write: each names the file, the problem and
# whom to tell. strict: once the file is fixed, the mark must go.
NOT_OURS_PATHS: dict[str, str] = {}
NOT_OURS_MACHINE: dict[str, str] = {}


@cache
def tracked() -> tuple[str, ...]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return tuple(p for p in out.split("\0") if p and (REPO / p).is_file())


def documents() -> list[str]:
    return sorted(p for p in tracked() if p.endswith(".md") or Path(p).name.startswith("README"))


def marked(paths, problems: dict[str, str]) -> list:
    return [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=problems[p]))
        if p in problems
        else p
        for p in paths
    ]


# --- reading a document ------------------------------------------------------------------

FENCED = re.compile(r"^[ \t]*```[^\n]*\n.*?^[ \t]*```[^\n]*$", re.S | re.M)


def is_markdown(doc: str) -> bool:
    return doc.endswith(".md")


def code_of(doc: str) -> list[str]:
    """The document's code: inline spans, fenced blocks, lines indented four spaces or more;
    all of a file that is not Markdown."""
    text = (REPO / doc).read_text()
    if not is_markdown(doc):
        return [text]
    rest = FENCED.sub("", text)
    return [
        *FENCED.findall(text),
        *re.findall(r"`([^`\n]+)`", rest),
        *re.findall(r"^(?: {4,}|\t).*$", rest, re.M),
    ]


def cited_paths(doc: str) -> set[str]:
    return {word.rstrip(".,;)") for code in code_of(doc) for word in PATH_WORD.findall(code)} - {""}


def cited_modules(doc: str) -> set[str]:
    return {word for code in code_of(doc) for word in MODULE_WORD.findall(code)}


def links(doc: str) -> list[str]:
    if not is_markdown(doc):
        return []
    text = FENCED.sub("", (REPO / doc).read_text())
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def exists(path: str, base: Path = REPO) -> bool:
    if re.search(r"[*<{]", path):
        pattern = re.sub(r"<[^>]*>|\{[^}]*\}", "*", path)
        return any(base.glob(pattern.rstrip("/")))
    return (base / path).exists()


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#+\s+(.*?)\s*#*$", FENCED.sub("", path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


# --- modules ------------------------------------------------------------------------------


def module_file(parts: list[str]) -> Path | None:
    """The file (or package folder) of a dotted module name in any source root."""
    for root in SOURCE_ROOTS:
        base = root.joinpath(*parts)
        files = sorted(base.parent.glob(base.name + ".py"))
        if files:
            return files[0]
        if base.is_dir() and any(base.glob("*.py")):
            return base
    return None


def defined(tree: ast.AST) -> dict[str, ast.AST]:
    """Names a module or class body defines (descending into if/try blocks), and for a class
    the attributes its methods set on self."""
    names: dict[str, ast.AST] = {}
    body = list(getattr(tree, "body", []))
    while body:
        node = body.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
            if isinstance(tree, ast.ClassDef):
                for sub in ast.walk(node):
                    if (
                        isinstance(sub, ast.Attribute)
                        and isinstance(sub.ctx, ast.Store)
                        and isinstance(sub.value, ast.Name)
                        and sub.value.id == "self"
                    ):
                        names[sub.attr] = sub
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names[n.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, (ast.If, ast.Try)):
            body += [*node.body, *node.orelse, *getattr(node, "finalbody", [])]
    return names


def module_problem(name: str) -> str | None:
    parts = name.split(".")
    for cut in range(len(parts), 1, -1):
        found = module_file(parts[:cut])
        if found is not None:
            break
    else:
        return f"{name}: no such module"
    rest = parts[cut:]
    if not rest:
        return None
    source = found / "__init__.py" if found.is_dir() else found
    if not source.is_file():
        return f"{name}: {'.'.join(parts[:cut])} has no {rest[0]}"
    scope: ast.AST = ast.parse(source.read_text())
    for i, attr in enumerate(rest[:2]):
        names = defined(scope)
        if attr not in names:
            return f"{name}: {'.'.join(parts[: cut + i])} defines no {attr}"
        scope = names[attr]
    return None


# --- module tables ------------------------------------------------------------------------


def module_tables() -> list[tuple[str, str, str, list[str]]]:
    """(document, heading, folder, modules) for every table whose first column is `module`."""
    out = []
    for doc in documents():
        if not is_markdown(doc):
            continue
        heading = ""
        lines = FENCED.sub("", (REPO / doc).read_text()).splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            if line.startswith("|") and line.split("|")[1].strip() == "module":
                rows = []
                i += 2  # the header and its |---| line
                while i < len(lines) and lines[i].startswith("|"):
                    rows.append(lines[i].split("|")[1])
                    i += 1
                folders = re.findall(r"`([\w/.-]+)/`", heading)
                folder = folders[-1] if folders else ""
                modules = [m for row in rows for m in re.findall(r"`([\w*]+\.py)`", row)]
                out.append((doc, heading, folder, modules))
                continue
            i += 1
    return out


def modules_of(folder: str) -> set[str]:
    return {p.name for p in (REPO / folder).glob("*.py") if p.name != "__init__.py"}


TABLES = module_tables()


def table_id(table) -> str:
    return f"{table[0]}:{table[2] or table[1]}"


# --- the tests ----------------------------------------------------------------------------


def test_the_top_folders_are_the_repositorys():
    folders = {p.split("/")[0] for p in tracked() if "/" in p and not p.startswith(".")}
    assert folders == set(TOP_FOLDERS)


@pytest.mark.parametrize("doc", marked(documents(), NOT_OURS_PATHS))
def test_every_repository_path_a_document_cites_exists(doc: str):
    assert sorted(p for p in cited_paths(doc) if not exists(p)) == []


@pytest.mark.parametrize("doc", [d for d in documents() if is_markdown(d)])
def test_every_link_of_a_document_reaches_a_file_and_its_heading(doc: str):
    base = (REPO / doc).parent
    broken = []
    for target in links(doc):
        path, _, anchor = target.partition("#")
        file = (base / path) if path else REPO / doc
        if not file.exists() or (anchor and (file.suffix != ".md" or anchor not in anchors(file))):
            broken.append(target)
    assert broken == []


@pytest.mark.parametrize("doc", documents())
def test_every_module_a_document_names_exists_with_the_names_it_cites(doc: str):
    assert sorted(why for m in cited_modules(doc) if (why := module_problem(m))) == []


def test_the_path_rule_reads_repository_paths_and_leaves_host_paths_and_placeholders():
    code = (
        "`broker/acl` [x](../README.md) `/etc/clockfleet/agent.yaml` `NAME.password` "
        "`RUNDIR/logs/` `tests/agent/test_cli_once.py::test_x` `compose.local.yaml`, "
        "`/opt/clockfleet/bin/pip` `Makefile` `docs/`."
    )
    found = {w.rstrip(".,;)") for w in PATH_WORD.findall(code)}
    assert found == {
        "broker/acl",
        "tests/agent/test_cli_once.py",
        "compose.local.yaml",
        "Makefile",
        "docs/",
    }


def test_the_module_rule_reads_dotted_module_names_and_leaves_host_file_names():
    code = "`clockfleet.ntp.checks.ProbeSettings` /etc/mosquitto/conf.d/clockfleet.conf"
    assert MODULE_WORD.findall(code) == ["clockfleet.ntp.checks.ProbeSettings"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_a_module_table(package: str):
    assert modules_of(package), f"{package} holds no module"
    assert [t for t in TABLES if t[2] == package], f"no module table for {package}/"


@pytest.mark.parametrize("table", TABLES, ids=table_id)
def test_a_module_table_describes_a_folder_of_the_repository(table):
    doc, heading, folder, _ = table
    assert folder and (REPO / folder).is_dir(), f"{doc}: '{heading}' names no folder"


@pytest.mark.parametrize("table", TABLES, ids=table_id)
def test_a_module_table_names_only_modules_that_exist(table):
    _, _, folder, modules = table
    assert sorted(set(modules) - modules_of(folder)) == []


@pytest.mark.parametrize("table", TABLES, ids=table_id)
def test_a_module_table_lists_every_module_of_its_folder(table):
    _, _, folder, modules = table
    assert sorted(modules_of(folder) - set(modules)) == []


@pytest.mark.parametrize(
    "path",
    marked(sorted({*documents(), *GENERATED}), NOT_OURS_MACHINE),
)
def test_no_document_or_generated_file_holds_a_path_of_the_machine_it_was_written_on(path):
    found = set(MACHINE_PATH.findall((REPO / path).read_text()))
    assert sorted(p for p in found if p.rstrip(".,;:") not in EXAMPLE_PATHS) == []
