"""Read the fleet file's YAML into plain values, remembering the line of every YAML path.

Errors name `FILE:LINE: PATH: reason`, so the reader keeps each path's line while it builds
values node by node (PyYAML's own loader forgets positions). Duplicate and non-string keys
are errors here, since a YAML loader would keep the last duplicate and drop the rest
silently. The file is bounded in size and pre-scanned (`yaml_prescan`) before it is built.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

from clockfleet.publisher.yaml_prescan import LOADER, shape_problem

# A YAML mapping as read: keys are strings (any other key is an error), values plain.
Section = dict[str, object]

# Far above any real fleet (100,000 agents is ~6 MB); read no further than one byte past it.
MAX_FILE_BYTES = 16 * 1024 * 1024


class FleetFileError(ValueError):
    """The file cannot be used; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# Errors quote values the operator wrote; a 10 MB string or a huge aliased structure must
# not become a 10 MB error line.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 6
_short.maxlevel = 3

# Construction errors PyYAML's constructors let through as plain exceptions (`!!int abc`,
# `2026-13-45`, `!!bool x`, `!!timestamp x`): a bad value, not a crash.
_CONSTRUCT_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError)


def printable(text: str) -> str:
    """Error lines reach a terminal: control characters and the like are shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def show(value: object) -> str:
    return _short.repr(value)


class Tree:
    """Plain Python values built from YAML nodes, with the line of every YAML path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self.errors: list[str] = []

    def error(self, path: str, reason: str) -> None:
        line = self.lines.get(path)
        where = f"{self.file}:{line}" if line else self.file
        shown = path if len(path) <= 200 else path[:200] + "..."
        self.errors.append(printable(f"{where}: {shown or '(top level)'}: {reason}"))

    # `loader` is PyYAML's C or pure-Python SafeLoader, whichever is installed (Any).
    def construct(self, loader: Any, node: yaml.Node, path: str) -> tuple[bool, object]:
        """(True, value), or (False, None) with the error recorded."""
        try:
            return True, loader.construct_object(node, deep=True)
        except _CONSTRUCT_ERRORS as exc:
            self.lines.setdefault(path, node.start_mark.line + 1)
            self.error(path, f"unreadable value {show(node.value)}: {exc}")
            return False, None

    def build(self, loader: Any, node: yaml.Node, path: str) -> object:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # resolve `<<` merge keys as a YAML loader would
            out: Section = {}
            for key_node, value_node in node.value:
                ok, key = self.construct(loader, key_node, path)
                if not ok:
                    continue
                if not isinstance(key, str):
                    child = f"{path}.{show(key)}" if path else show(key)
                    self.lines[child] = key_node.start_mark.line + 1
                    self.error(child, f"key {show(key)} must be a string")
                    continue
                child = f"{path}.{key}" if path else key
                if key in out:
                    self.lines[child] = key_node.start_mark.line + 1
                    self.error(child, "duplicate key (YAML would silently keep only the last)")
                    continue
                # A setting's line is its key's line (a block value starts on the next one).
                self.lines.setdefault(child, key_node.start_mark.line + 1)
                out[key] = self.build(loader, value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(loader, n, f"{path}[{i}]") for i, n in enumerate(node.value)]
        return self.construct(loader, node, path)[1]


def read(path: Path) -> tuple[object, Tree]:
    """The file's values and their positions, or FleetFileError with one line."""
    tree = Tree(str(path))
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise FleetFileError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise FleetFileError([printable(f"{path}: cannot read: {exc}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise FleetFileError([f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FleetFileError([f"{path}: cannot read: not UTF-8 ({exc})"]) from None
    if (problem := shape_problem(text)) is not None:
        raise FleetFileError([printable(f"{path}: {problem}")])
    loader = LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise FleetFileError([f"{path}: the file is empty (expected `regions:` at least)"])
        data = tree.build(loader, node, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise FleetFileError([printable(f"{path}{line}: YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise FleetFileError([printable(f"{path}: YAML error: {exc}")]) from None
    except RecursionError:
        raise FleetFileError([f"{path}: nested too deeply (a recursive alias?)"]) from None
    finally:
        loader.dispose()
    return data, tree
