"""Load and validate the operator's fleet file (config/fleet.yaml).

The whole file is checked and every problem is collected, each as `FILE:LINE: PATH: reason`
with PATH the YAML path (`regions.us-east.servers[1].port`), so an operator fixes a file in
one go. Unknown keys are errors at every level: a typo must not silently drop a setting.
Reading the YAML (positions, duplicate keys, size and shape bounds) is `yaml_tree`'s job;
this module checks what it read against the rules of the wire contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clockfleet.protocol.ids import ID_PATTERN, host_problem, is_valid_id, timezone_problem
from clockfleet.protocol.messages import (
    MAX_POLL_INTERVAL_S,
    MAX_RESYNC_JITTER_S,
    MAX_SERVERS,
    MIN_POLL_INTERVAL_S,
)
from clockfleet.publisher.yaml_tree import FleetFileError as FleetFileError  # load() raises it
from clockfleet.publisher.yaml_tree import Section, Tree, read, show

DEFAULT_PORT = 123

TOP_KEYS = ("signing_key", "defaults", "rollout", "regions", "agents")
ROLLOUT_KEYS = (
    "canary",
    "bake_s",
    "max_failing_pct",
    "min_reported_pct",
    "offset_tolerance_s",
)
TIMING_KEYS = ("poll_interval_s", "resync_jitter_s")
REGION_KEYS = ("timezone", "servers", *TIMING_KEYS)
SERVER_KEYS = ("host", "port", "nts", "nts_ke_port")
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
    nts: bool = False  # NTS only (docs/nts.md); the list then goes out as clock.servers/2
    nts_ke_port: int | None = None  # None: NTS-KE's default port, 4460


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
    inherits_zone: bool = False  # no zone of its own: a zone rollout of its region moves it


@dataclass
class Fleet:
    path: Path
    regions: dict[str, Region] = field(default_factory=dict)
    agents: dict[str, AgentProfile] = field(default_factory=dict)
    signing_key: Path | None = None  # resolved against the fleet file's folder
    rollout: dict[str, float] = field(default_factory=dict)  # `rollout:`, checked


# --- checks ------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _mapping(tree: Tree, value: object, path: str, allowed: tuple[str, ...]) -> Section | None:
    if not isinstance(value, dict):
        tree.error(path, f"must be a mapping, not {_type_name(value)}")
        return None
    for key in value:
        if key not in allowed:
            tree.error(
                f"{path}.{key}" if path else key,
                f"unknown key {show(key)} (allowed: {', '.join(allowed)})",
            )
    return value


def _int_in(tree: Tree, value: object, path: str, low: int, high: int) -> int | None:
    # bool is an int in Python; `port: yes` must not become port 1.
    if isinstance(value, bool) or not isinstance(value, int):
        tree.error(path, f"must be an integer, not {_type_name(value)} {show(value)}")
        return None
    if not low <= value <= high:
        tree.error(path, f"{value} is outside {low}..{high}")
        return None
    return value


def _timezone(tree: Tree, value: object, path: str) -> str | None:
    if not isinstance(value, str):
        tree.error(path, f"must be a time zone name, not {_type_name(value)}")
        return None
    if (problem := timezone_problem(value)) is not None:
        tree.error(path, problem)
        return None
    return value


def _timings(tree: Tree, section: Section, path: str) -> dict[str, int]:
    out = {}
    for name, (low, high) in TIMING_BOUNDS.items():
        if name in section:
            value = _int_in(tree, section[name], f"{path}.{name}", low, high)
            if value is not None:
                out[name] = value
    return out


def _servers(tree: Tree, value: object, path: str) -> tuple[ServerEntry, ...]:
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
            tree.error(f"{epath}.host", f"must be a host name or IP address, not {show(host)}")
            continue
        if (problem := host_problem(host)) is not None:
            tree.error(f"{epath}.host", problem)
            continue
        nts = _nts(tree, entry, epath)
        if port is None or nts is None:
            continue
        if (host, port) in seen:
            tree.error(epath, f"{host}:{port} is listed twice (first at [{seen[(host, port)]}])")
            continue
        seen[(host, port)] = i
        out.append(ServerEntry(host, port, *nts))
    return tuple(out)


def _nts(tree: Tree, entry: Section, epath: str) -> tuple[bool, int | None] | None:
    """An entry's `nts` and `nts_ke_port`, or None when either is wrong (recorded)."""
    nts = entry.get("nts", False)
    if not isinstance(nts, bool):
        tree.error(f"{epath}.nts", f"must be true or false, not {show(nts)}")
        return None
    if "nts_ke_port" not in entry:
        return nts, None
    ke_port = _int_in(tree, entry["nts_ke_port"], f"{epath}.nts_ke_port", 1, 65535)
    if ke_port is not None and not nts:
        tree.error(f"{epath}.nts_ke_port", "only for an NTS server: add `nts: true`")
        return None
    return (nts, ke_port) if ke_port is not None else None


def _entry(
    tree: Tree, what: str, ident: str, value: object, allowed: tuple[str, ...]
) -> tuple[str, bool, Section | None]:
    """What checking a region or an agent starts with: its path, whether its id is valid
    (a bad one is recorded), and its section (None when it is not a mapping)."""
    path = f"{what}s.{ident}"
    ok = is_valid_id(ident)
    if not ok:
        tree.error(path, f"{what} id {show(ident)} must match {ID_PATTERN} (no dots)")
    return path, ok, _mapping(tree, value, path, allowed)


def _region(tree: Tree, rid: str, value: object, defaults: dict[str, int]) -> Region | None:
    path, ok, section = _entry(tree, "region", rid, value, REGION_KEYS)
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


def _agent(
    tree: Tree, aid: str, value: object, regions: dict[str, Region], all_regions: set[str]
) -> AgentProfile | None:
    path, ok, section = _entry(tree, "agent", aid, value, AGENT_KEYS)
    if section is None:
        return None
    region = section.get("region")
    if region is None:
        tree.error(path, "missing `region`")
        return None
    if not isinstance(region, str) or region not in all_regions:
        known = ", ".join(sorted(str(r) for r in all_regions)) or "none"
        tree.error(f"{path}.region", f"no region {show(region)} in this file (regions: {known})")
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
    if not ok or region not in regions or timezone is None:
        return None  # the region itself is invalid; its errors are already listed
    return AgentProfile(aid, region, timezone, inherits_zone="timezone" not in section)


def _rollout(tree: Tree, value: object) -> dict[str, float]:
    """`rollout: {canary: 10%, bake_s: 600, max_failing_pct: 10, min_reported_pct: 80,
    offset_tolerance_s: 0.5}`: how a changed list goes out (docs/rollout.md)."""
    section = _mapping(tree, value, "rollout", ROLLOUT_KEYS)
    out: dict[str, float] = {}
    if section is None:
        return out
    if "canary" in section:
        raw = section["canary"]
        text = str(raw).strip()
        number = text[:-1] if text.endswith("%") else text
        try:
            pct = float(number)
        except ValueError:
            pct = -1.0
        if isinstance(raw, bool) or not 0 <= pct <= 100:
            tree.error("rollout.canary", f"{show(raw)} is not a percentage within 0..100")
        else:
            out["canary"] = pct
    if "bake_s" in section:
        bake = _int_in(tree, section["bake_s"], "rollout.bake_s", 0, 7 * 86400)
        if bake is not None:
            out["bake_s"] = bake
    for name, low, high in (
        ("max_failing_pct", 0.0, 100.0),
        ("min_reported_pct", 0.0, 100.0),
        ("offset_tolerance_s", 0.001, 3600.0),
    ):
        if name in section:
            v = section[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
                tree.error(f"rollout.{name}", f"{show(v)} is not a number within {low}..{high}")
            else:
                out[name] = float(v)
    return out


def validate(data: object, tree: Tree, path: Path) -> Fleet:
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
    if "rollout" in top:
        fleet.rollout = _rollout(tree, top["rollout"])
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
    data, tree = read(path)
    # Errors found while building (duplicate or non-string keys) are already in tree.errors;
    # validate() adds the rest and raises with all of them.
    return validate(data, tree, path)
