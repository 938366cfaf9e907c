"""Load and validate the operator's fleet file (config/fleet.yaml).

The whole file is checked and every problem is collected, each as `FILE:LINE: PATH: reason`
with PATH the YAML path (`regions.us-east.servers[1].port`), so an operator fixes a file in
one go. Unknown keys are errors at every level: a typo must not silently drop a setting.
Duplicate keys are errors too (YAML loaders keep the last one and drop the rest silently).
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clockfleet.protocol.ids import host_problem, is_valid_id, timezone_problem
from clockfleet.protocol.messages import (
    MAX_POLL_INTERVAL_S,
    MAX_RESYNC_JITTER_S,
    MAX_SERVERS,
    MIN_POLL_INTERVAL_S,
)

DEFAULT_PORT = 123

TOP_KEYS = ("signing_key", "defaults", "regions", "agents")
TIMING_KEYS = ("poll_interval_s", "resync_jitter_s")
REGION_KEYS = ("timezone", "servers", *TIMING_KEYS)
SERVER_KEYS = ("host", "port")
AGENT_KEYS = ("region", "timezone")

# name -> (lowest, highest) allowed, as the wire contract bounds them.
TIMING_BOUNDS = {
    "poll_interval_s": (MIN_POLL_INTERVAL_S, MAX_POLL_INTERVAL_S),
    "resync_jitter_s": (0, MAX_RESYNC_JITTER_S),
}


@dataclass(frozen=True)
class ServerEntry:
    host: str
    port: int = DEFAULT_PORT


@dataclass(frozen=True)
class Region:
    id: str
    servers: tuple[ServerEntry, ...]
    timezone: str | None = None
    poll_interval_s: int | None = None
    resync_jitter_s: int | None = None


@dataclass(frozen=True)
class AgentProfile:
    id: str
    region: str
    timezone: str  # the agent's own, or its region's default


@dataclass
class Fleet:
    path: Path
    regions: dict[str, Region] = field(default_factory=dict)
    agents: dict[str, AgentProfile] = field(default_factory=dict)
    signing_key: Path | None = None  # resolved against the fleet file's folder


class FleetFileError(ValueError):
    """The file cannot be used; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


# --- YAML with positions -----------------------------------------------------------------

# libyaml's parser where installed: the pure-Python one takes ~4 s for 5000 agents.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Bounds far above any real fleet (100,000 agents is ~6 MB and ~600,000 nodes) that stop a
# hostile or broken file before it costs time or memory: aliases let a 1 KB file stand for
# 10^9 nodes ("billion laughs"), and building is recursive.
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
MAX_NODES = 1_000_000  # counted with every alias expanded

# Errors quote values the operator wrote; a 10 MB string or a huge aliased structure must
# not become a 10 MB error line.
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 6
_short.maxlevel = 3

# Construction errors PyYAML's constructors let through as plain exceptions (`!!int abc`,
# `2026-13-45`, `!!bool x`, `!!timestamp x`): a bad value, not a crash.
_CONSTRUCT_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, IndexError)


def _printable(text: str) -> str:
    """Error lines reach a terminal: control characters and the like are shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _show(value: Any) -> str:
    return _short.repr(value)


class _Tree:
    """Plain Python values built from YAML nodes, with the line of every YAML path."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        self.errors: list[str] = []

    def error(self, path: str, reason: str) -> None:
        line = self.lines.get(path)
        where = f"{self.file}:{line}" if line else self.file
        shown = path if len(path) <= 200 else path[:200] + "..."
        self.errors.append(_printable(f"{where}: {shown or '(top level)'}: {reason}"))

    def construct(self, loader: Any, node: yaml.Node, path: str) -> tuple[bool, Any]:
        """(True, value), or (False, None) with the error recorded."""
        try:
            return True, loader.construct_object(node, deep=True)
        except _CONSTRUCT_ERRORS as exc:
            self.lines.setdefault(path, node.start_mark.line + 1)
            self.error(path, f"unreadable value {_show(node.value)}: {exc}")
            return False, None

    def build(self, loader: Any, node: yaml.Node, path: str) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # resolve `<<` merge keys as a YAML loader would
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                ok, key = self.construct(loader, key_node, path)
                if not ok:
                    continue
                if not isinstance(key, str):
                    child = f"{path}.{_show(key)}" if path else _show(key)
                    self.lines[child] = key_node.start_mark.line + 1
                    self.error(child, f"key {_show(key)} must be a string")
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


class _TooBig(Exception):
    pass


def _shape_problem(text: str) -> str | None:
    """Why the file's YAML is too deep or expands too far, from libyaml's event stream.

    Runs before anything is composed or built: the event parser is iterative and keeps no
    tree, so this costs one pass however hostile the file. An alias counts as the whole
    (expanded) node it refers to, so a billion-laughs file is refused after a few events.
    Syntax errors are left to the real load, which reports them with their line.
    """
    loader = _Loader(text)
    stack: list[list] = []  # per open collection: [anchor, expanded size so far]
    sizes: dict[str, int] = {}
    total = 0

    def add(anchor: str | None, size: int) -> None:
        nonlocal total
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1][1] += size
            size = stack[-1][1]
        else:
            total += size
            size = total
        if size > MAX_NODES:
            raise _TooBig

    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_DEPTH:
                    return f"nested more than {MAX_DEPTH} levels deep"
                stack.append([event.anchor, 1])
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, size = stack.pop()
                add(anchor, size)
            elif isinstance(event, yaml.ScalarEvent):
                add(event.anchor, 1)
            elif isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for anchor, _ in stack):
                    return f"alias *{_printable(event.anchor)} refers to a node that contains it"
                add(None, sizes.get(event.anchor, 1))
    except _TooBig:
        return (
            f"more than {MAX_NODES:,} values once aliases are expanded "
            "(an alias bomb, or a file far larger than any fleet)"
        )
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()
    return None


def _parse(path: Path) -> tuple[Any, _Tree]:
    tree = _Tree(str(path))
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise FleetFileError([f"{path}: no such file"]) from None
    except OSError as exc:
        raise FleetFileError([_printable(f"{path}: cannot read: {exc}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise FleetFileError([f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FleetFileError([f"{path}: cannot read: not UTF-8 ({exc})"]) from None
    if (problem := _shape_problem(text)) is not None:
        raise FleetFileError([f"{path}: {problem}"])
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise FleetFileError([f"{path}: the file is empty (expected `regions:` at least)"])
        data = tree.build(loader, node, "")
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise FleetFileError([_printable(f"{path}{line}: YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise FleetFileError([_printable(f"{path}: YAML error: {exc}")]) from None
    except RecursionError:
        raise FleetFileError([f"{path}: nested too deeply (a recursive alias?)"]) from None
    finally:
        loader.dispose()
    return data, tree


# --- checks ------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(tree: _Tree, value: Any, path: str, allowed: tuple[str, ...]) -> dict | None:
    if not isinstance(value, dict):
        tree.error(path, f"must be a mapping, not {_type_name(value)}")
        return None
    for key in value:
        if key not in allowed:
            tree.error(
                f"{path}.{key}" if path else key,
                f"unknown key {_show(key)} (allowed: {', '.join(allowed)})",
            )
    return value


def _int_in(tree: _Tree, value: Any, path: str, low: int, high: int) -> int | None:
    # bool is an int in Python; `port: yes` must not become port 1.
    if isinstance(value, bool) or not isinstance(value, int):
        tree.error(path, f"must be an integer, not {_type_name(value)} {_show(value)}")
        return None
    if not low <= value <= high:
        tree.error(path, f"{value} is outside {low}..{high}")
        return None
    return value


def _timezone(tree: _Tree, value: Any, path: str) -> str | None:
    if not isinstance(value, str):
        tree.error(path, f"must be a time zone name, not {_type_name(value)}")
        return None
    if (problem := timezone_problem(value)) is not None:
        tree.error(path, problem)
        return None
    return value


def _timings(tree: _Tree, section: dict, path: str) -> dict[str, int]:
    out = {}
    for name, (low, high) in TIMING_BOUNDS.items():
        if name in section:
            value = _int_in(tree, section[name], f"{path}.{name}", low, high)
            if value is not None:
                out[name] = value
    return out


def _servers(tree: _Tree, value: Any, path: str) -> tuple[ServerEntry, ...]:
    if not isinstance(value, list):
        tree.error(path, f"must be a list of {{host, port}}, not {_type_name(value)}")
        return ()
    if not value:
        tree.error(path, "must list at least one server")
        return ()
    if len(value) > MAX_SERVERS:
        tree.error(path, f"{len(value)} servers; at most {MAX_SERVERS} are allowed")
    out: list[ServerEntry] = []
    seen: dict[tuple[str, int], int] = {}
    for i, entry in enumerate(value):
        epath = f"{path}[{i}]"
        entry = _mapping(tree, entry, epath, SERVER_KEYS)
        if entry is None:
            continue
        host = entry.get("host")
        port: int | None = DEFAULT_PORT
        if "port" in entry:
            port = _int_in(tree, entry["port"], f"{epath}.port", 1, 65535)
        if host is None:
            tree.error(epath, "missing `host`")
            continue
        if not isinstance(host, str):
            tree.error(f"{epath}.host", f"must be a host name or IP address, not {_show(host)}")
            continue
        if (problem := host_problem(host)) is not None:
            tree.error(f"{epath}.host", problem)
            continue
        if port is None:
            continue
        if (host, port) in seen:
            tree.error(epath, f"{host}:{port} is listed twice (first at [{seen[(host, port)]}])")
            continue
        seen[(host, port)] = i
        out.append(ServerEntry(host, port))
    return tuple(out)


def _region(tree: _Tree, rid: Any, value: Any, defaults: dict[str, int]) -> Region | None:
    path = f"regions.{rid}"
    ok = True
    if not is_valid_id(rid):
        tree.error(path, f"region id {_show(rid)} must match [A-Za-z0-9_-]{{1,64}} (no dots)")
        ok = False
    section = _mapping(tree, value, path, REGION_KEYS)
    if section is None:
        return None
    timezone = None
    if "timezone" in section:
        timezone = _timezone(tree, section["timezone"], f"{path}.timezone")
        ok = ok and timezone is not None
    if "servers" not in section:
        tree.error(path, "missing `servers`")
        return None
    errors_before = len(tree.errors)
    servers = _servers(tree, section["servers"], f"{path}.servers")
    timings = {**defaults, **_timings(tree, section, path)}
    if not ok or len(tree.errors) != errors_before or not servers:
        return None
    return Region(rid, servers, timezone, **timings)


def _agent(tree: _Tree, aid: Any, value: Any, regions: dict[str, Region], all_regions: set):
    path = f"agents.{aid}"
    ok = True
    if not is_valid_id(aid):
        tree.error(path, f"agent id {_show(aid)} must match [A-Za-z0-9_-]{{1,64}} (no dots)")
        ok = False
    section = _mapping(tree, value, path, AGENT_KEYS)
    if section is None:
        return None
    region = section.get("region")
    if region is None:
        tree.error(path, "missing `region`")
        return None
    if not isinstance(region, str) or region not in all_regions:
        known = ", ".join(sorted(str(r) for r in all_regions)) or "none"
        tree.error(f"{path}.region", f"no region {_show(region)} in this file (regions: {known})")
        return None
    timezone = None
    if "timezone" in section:
        timezone = _timezone(tree, section["timezone"], f"{path}.timezone")
        if timezone is None:
            return None
    elif region in regions:
        timezone = regions[region].timezone
        if timezone is None:
            tree.error(path, f"no `timezone`, and region {region!r} has no default timezone either")
            return None
    if not ok or region not in regions:
        return None  # the region itself is invalid; its errors are already listed
    return AgentProfile(aid, region, timezone)


def validate(data: Any, tree: _Tree, path: Path) -> Fleet:
    fleet = Fleet(path=path)
    top = _mapping(tree, data, "", TOP_KEYS)
    if top is None:
        raise FleetFileError(tree.errors)
    if "signing_key" in top:
        key = top["signing_key"]
        if not isinstance(key, str) or not key:
            tree.error("signing_key", f"must be a file path, not {_type_name(key)}")
        else:
            fleet.signing_key = (path.parent / key).resolve()
    defaults: dict[str, int] = {}
    if "defaults" in top:
        section = _mapping(tree, top["defaults"], "defaults", TIMING_KEYS)
        if section is not None:
            defaults = _timings(tree, section, "defaults")
    raw_regions = top.get("regions")
    if raw_regions is None:
        tree.error("", "missing `regions` (at least one region with its servers)")
        raw_regions = {}
    elif not isinstance(raw_regions, dict):
        tree.error("regions", f"must be a mapping of region ids, not {_type_name(raw_regions)}")
        raw_regions = {}
    elif not raw_regions:
        tree.error("regions", "no regions defined")
    for rid, value in raw_regions.items():
        region = _region(tree, rid, value, defaults)
        if region is not None:
            fleet.regions[rid] = region
    raw_agents = top.get("agents") or {}
    if not isinstance(raw_agents, dict):
        tree.error("agents", f"must be a mapping of agent ids, not {_type_name(raw_agents)}")
        raw_agents = {}
    for aid, value in raw_agents.items():
        agent = _agent(tree, aid, value, fleet.regions, set(raw_regions))
        if agent is not None:
            fleet.agents[aid] = agent
    if tree.errors:
        raise FleetFileError(tree.errors)
    return fleet


def load(path: Path) -> Fleet:
    """The validated fleet, or FleetFileError listing every problem in the file."""
    data, tree = _parse(path)
    # Errors found while building (duplicate or non-string keys) are already in tree.errors;
    # validate() adds the rest and raises with all of them.
    return validate(data, tree, path)
