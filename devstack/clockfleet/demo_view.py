"""What the demo shows: the fleet table, change events, and the final verdict.

The rows come from `clockfleet status --json` (the broker's retained state as the
collector's status command reads it); this module only turns them into a table, notices what
changed between two looks, and judges the end state.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Row:
    """One agent as the table shows it; fields follow the report's contract names."""

    agent: str
    region: str = ""
    state: str = ""  # online / offline / "" (no status seen)
    ok: bool | None = None  # None: no report yet
    list_version: int | None = None
    server: str = ""
    offset_s: float | None = None
    delay_s: float | None = None
    stratum: int | None = None
    timezone: str = ""
    discipline: str = ""
    tried: tuple[tuple[str, str], ...] = ()  # (host:port, outcome) in list order
    note: str = ""  # the report's note, e.g. a single-server list applied unconfirmed
    age_s: float | None = None


@dataclass
class View:
    rows: dict[str, Row] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)  # region -> list version
    error: str = ""  # why the view could not be read (then it is empty)


def _server_text(server: Any) -> str:
    if isinstance(server, dict) and "host" in server:
        return f"{server['host']}:{server.get('port', 123)}"
    return str(server or "")


def row_from_json(agent: str, entry: dict[str, Any]) -> Row:
    """A Row from one agent's entry of `clockfleet status --json`.

    The entry carries the report's fields under their contract names, either at its top level
    or under `report`, and the status's `state` at the top or under `status`.
    """
    report = entry.get("report") if isinstance(entry.get("report"), dict) else entry
    status = entry.get("status") if isinstance(entry.get("status"), dict) else entry
    tried = tuple(
        (f"{t.get('host')}:{t.get('port')}", str(t.get("outcome")))
        for t in (report.get("tried") or [])
        if isinstance(t, dict)
    )
    ok = report.get("ok")
    age = entry.get("report_age_s", entry.get("age_s"))
    return Row(
        agent=agent,
        region=str(report.get("region") or entry.get("region") or ""),
        state=str(status.get("state") or ""),
        ok=ok if isinstance(ok, bool) else None,
        list_version=report.get("list_version"),
        server=_server_text(report.get("server")),
        offset_s=report.get("offset_s"),
        delay_s=report.get("delay_s"),
        stratum=report.get("stratum"),
        timezone=str(report.get("timezone") or ""),
        discipline=str(report.get("discipline") or ""),
        tried=tried,
        note=str(report.get("note") or ""),
        age_s=age if isinstance(age, int | float) else None,
    )


def _fmt_offset(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 0.1:
        return f"{v:+.3f} s"
    return f"{v * 1000:+.3f} ms"


def _outcome_style(outcome: str) -> str:
    if outcome == "ok":
        return "green"
    if outcome == "not-tried":
        return "dim"
    if outcome in ("falseticker", "panic-offset", "too-far"):
        return "magenta"
    return "yellow"


Names = dict[tuple[str, int], str]


def label(hostport: str, names: Names | None) -> str:
    """A server's role in the demo (good-a, skewed, ...) instead of its address, if known."""
    if names:
        host, _, port = hostport.rpartition(":")
        role = names.get((host, int(port))) if port.isdigit() else None
        if role:
            return role
    return hostport


def table(view: View, names: Names | None = None, width: int = 160) -> Table:
    """The fleet table; `names` maps (host, port) of the demo's servers to their roles.
    Narrow terminals (under 120 columns) get no time zone column; the agent's name is
    green while it is online either way."""
    wide = width >= 120
    t = Table(title="clockfleet demo fleet", expand=False)
    columns = ["agent", "region", "list", "sync", "server", "offset"]
    if wide:
        columns += ["time zone"]
    for col in columns:
        t.add_column(col, no_wrap=True)
    t.add_column("tried, in list order")

    for agent in sorted(view.rows):
        r = view.rows[agent]
        latest = view.published.get(r.region)
        if r.list_version is None:
            version = Text("-", style="dim")
        else:
            stale = latest is not None and r.list_version < latest
            version = Text(str(r.list_version), style="yellow" if stale else "")
        sync = (
            Text("waiting", style="dim")
            if r.ok is None
            else Text("ok", style="green")
            if r.ok
            else Text("FAILED", style="bold red")
        )
        drift = r.offset_s is not None and abs(r.offset_s) > 0.5
        offset = Text(_fmt_offset(r.offset_s), style="bold magenta" if drift else "")
        tried = Text()
        for i, (hostport, outcome) in enumerate(r.tried):
            if i:
                tried.append(" ")
            tried.append(f"{label(hostport, names)}:", style="dim")
            tried.append(outcome, style=_outcome_style(outcome))
        if r.note:
            tried.append(f" ({r.note})", style="dim")
        cells = [
            Text(
                agent if r.state == "online" else f"{agent} ({r.state or 'no status'})",
                style="green" if r.state == "online" else "red",
            ),
            r.region,
            version,
            sync,
            label(r.server, names) if r.server else "-",
            offset,
        ]
        if wide:
            cells.append(r.timezone or "-")
        t.add_row(*cells, tried)
    return t


def plain_table(view: View, names: Names | None = None) -> str:
    """The table as plain text (for logs and `DEMO_FOR` runs)."""
    from rich.console import Console

    console = Console(width=160, no_color=True, force_terminal=False, record=True)
    with console.capture() as cap:
        console.print(table(view, names))
    return cap.get()


def changes(before: View, after: View, names: Names | None = None) -> list[str]:
    """One line per agent whose report moved on (new version, server, result, or first)."""
    out = []
    for agent, r in sorted(after.rows.items()):
        old = before.rows.get(agent)
        if r.ok is None:
            continue
        key = (r.list_version, r.server, r.ok, r.tried)
        if old is not None and (old.list_version, old.server, old.ok, old.tried) == key:
            continue
        note = f" ({r.note})" if r.note else ""
        outcomes = ", ".join(f"{label(hp, names)} {o}" for hp, o in r.tried)
        server = label(r.server, names)
        result = f"ok via {server}, offset {_fmt_offset(r.offset_s)}" if r.ok else "FAILED"
        out.append(
            f"{agent} ({r.region}) list v{r.list_version}: {result}; tried: {outcomes}{note}"
        )
    for region, version in sorted(after.published.items()):
        if before.published.get(region) != version:
            out.append(f"region {region}: list version {version} is published")
    return out


def problems(view: View, expected: list[str]) -> list[str]:
    """Why the fleet is not done: every expected agent must have a good sync on the latest
    published list of its region. Empty when all is well."""
    out = []
    for agent in expected:
        r = view.rows.get(agent)
        if r is None or r.ok is None:
            out.append(f"{agent}: no report")
            continue
        latest = view.published.get(r.region)
        if latest is None:
            out.append(f"{agent}: no published list for its region {r.region!r}")
        elif r.list_version != latest:
            out.append(f"{agent}: reported list version {r.list_version}, latest is {latest}")
        if not r.ok:
            outcomes = ", ".join(f"{hp} {o}" for hp, o in r.tried) or "nothing"
            out.append(f"{agent}: last sync failed (tried: {outcomes})")
    return out


def view_from_status_json(rows: Any) -> View:
    """A View from the output of `clockfleet status --json`: a list of one object per agent
    (agent, region, state, published_version, list_version, ok, server, offset_s, ...)."""
    view = View()
    if not isinstance(rows, list):
        return view
    for entry in rows:
        if not isinstance(entry, dict) or not isinstance(entry.get("agent"), str):
            continue
        row = row_from_json(entry["agent"], entry)
        view.rows[row.agent] = row
        published = entry.get("published_version")
        if isinstance(published, int) and not isinstance(published, bool) and row.region:
            view.published[row.region] = published
    return view


def with_tried(view: View, reports: dict[str, dict[str, Any]]) -> View:
    """The view with each agent's `tried` list taken from its own latest report (the agent's
    state directory keeps it as report.json), when that report is the one the view shows."""
    rows = {}
    for agent, row in view.rows.items():
        report = reports.get(agent) or {}
        own = row_from_json(agent, report)
        same = report.get("list_version") == row.list_version and report.get("ok") == row.ok
        rows[agent] = replace(row, tried=own.tried, note=own.note) if own.tried and same else row
    return View(rows, dict(view.published))
