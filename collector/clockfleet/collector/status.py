"""`clockfleet status`: the fleet as a table (or JSON) from the broker's retained state.

Reads the broker with the collector's own `Collector` (QoS 0, the socket drained by its own
thread: Mosquitto hands a QoS 1 wildcard subscriber at most ~1020 retained messages and drops
QoS 0 ones for a slow reader). The snapshot is complete once the collector's fence (an
UNSUBSCRIBE answered after every retained message, on Mosquitto) is answered and then no
message has come for --settle seconds (for brokers that deliver later), bounded by --wait.

Text from messages reaches a terminal here, so none of it is interpreted: every table cell
is a rich `Text` (never markup) made printable (control characters and ANSI escapes shown
as escapes, see text.py) and bounded; --json keeps values faithful and lets JSON escape
them (ASCII only: no control character reaches the terminal raw).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from clockfleet.collector.auth_view import chosen_auth
from clockfleet.collector.fleet_state import AgentEntry, FleetState, Result, Snapshot, is_behind
from clockfleet.collector.ingest import Collector
from clockfleet.collector.text import printable
from clockfleet.protocol.connection import (
    BrokerUnreachable,
    ConnectionSettings,
    UsageError,
    add_arguments,
    command_parser,
    settings_from_args,
)

DEFAULT_POLL_INTERVAL_S = 3600
# Widest a cell from a message may be: a DNS name with a port fits.
CELL_MAX = 80

log = logging.getLogger("clockfleet.collector")

DESCRIPTION = """\
Show every agent the broker holds a retained report or status for: region, online/offline,
applied list version against the region's published one ("behind" when older), chosen
server and how its answers were authenticated (auth: nts, or none for plain NTP), offset
(worst |offset| first), delay, stratum, age of the last report ("stale" past
2 x the region's poll interval, or --stale-after), time zone and outcome.
--json prints the same rows as a JSON list of objects for scripts.
"""


@dataclass
class Row:
    agent: str
    region: str
    state: str  # online, offline or unknown (no status message)
    session: int | None
    published_version: int | None
    list_version: int | None
    behind: bool
    ok: bool | None
    outcome: str
    server: str | None
    offset_s: float | None
    delay_s: float | None
    stratum: int | None
    report_at: str | None
    report_age_s: float | None
    stale: bool
    timezone: str | None
    discipline: str | None
    auth: str | None = None  # the chosen server's: "nts" or "none" (auth_view.py)


def outcome_of(entry: AgentEntry) -> str:
    report = entry.report
    if report is None:
        return "no report"
    if report.ok:
        return "ok"
    counts = Counter(t.outcome for t in report.tried if t.outcome != "not-tried")
    if not counts:
        return "failed"
    parts = [f"{o} x{n}" if n > 1 else o for o, n in counts.most_common()]
    return "failed: " + ", ".join(parts)


def build_rows(
    snap: Snapshot, *, now: float, stale_after_s: float | None = None, region: str | None = None
) -> list[Row]:
    """One row per agent, worst |offset| first (agents without an offset last, by name)."""
    rows = []
    for agent, entry in snap.agents.items():
        try:
            row = _row(agent, entry, snap, now, stale_after_s, region)
        except Exception as exc:  # one agent's odd state must not hide the rest of the fleet
            log.error(
                "cannot show agent %s: %s: %s",
                printable(agent, 80),
                type(exc).__name__,
                printable(str(exc), 200),
            )
            continue
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda r: (r.offset_s is None, -abs(r.offset_s or 0.0), r.agent))
    return rows


def _row(
    agent: str,
    entry: AgentEntry,
    snap: Snapshot,
    now: float,
    stale_after_s: float | None,
    region: str | None,
) -> Row | None:
    agent_region = entry.region()
    if region is not None and agent_region != region:
        return None
    report, status = entry.report, entry.status
    published = snap.regions.get(agent_region)
    published_version = published.version if published is not None else None
    poll = (published.poll_interval_s if published is not None else None) or (
        DEFAULT_POLL_INTERVAL_S
    )
    limit = stale_after_s if stale_after_s is not None else 2 * poll
    at = report.at.timestamp() if report is not None else None
    age = None if at is None else max(0.0, now - at)
    return Row(
        agent=agent,
        region=agent_region,
        state=status.state if status is not None else "unknown",
        session=status.session if status is not None else None,
        published_version=published_version,
        list_version=report.list_version if report is not None else None,
        behind=is_behind(entry, snap.regions),
        ok=report.ok if report is not None else None,
        outcome=outcome_of(entry),
        server=(
            f"{report.server.host}:{report.server.port}"
            if report is not None and report.server is not None
            else None
        ),
        offset_s=report.offset_s if report is not None else None,
        delay_s=report.delay_s if report is not None else None,
        stratum=report.stratum if report is not None else None,
        report_at=report.at.isoformat() if report is not None else None,
        report_age_s=None if age is None else round(age, 3),
        stale=age is None or age > limit,
        timezone=report.timezone if report is not None else None,
        discipline=report.discipline if report is not None else None,
        auth=chosen_auth(report),
    )


def read_fleet(settings: ConnectionSettings, *, wait_s: float, settle_s: float) -> FleetState:
    """Read the broker's retained state the way the collector does (QoS 0, socket drained
    by its own thread); return once the snapshot has been delivered."""
    last_message = [time.monotonic()]

    def on_message(result: Result, t: float) -> None:
        last_message[0] = t

    collector = Collector(settings, on_message=on_message)
    deadline = time.monotonic() + wait_s
    collector.start(timeout_s=min(wait_s, settings.connect_timeout_s))
    try:
        collector.retained_loaded.wait(max(0.0, deadline - time.monotonic()))
        last_message[0] = max(last_message[0], time.monotonic())
        while time.monotonic() < deadline:
            quiet = time.monotonic() - last_message[0]
            if quiet >= settle_s:
                break
            time.sleep(min(settle_s - quiet, 0.05))
    finally:
        collector.stop()
    return collector.state


def _fmt_seconds(value: float | None, scale: float = 1e3, unit: str = "ms") -> str:
    return "-" if value is None else f"{value * scale:+.3f} {unit}"


def _fmt_age(age: float | None) -> str:
    if age is None:
        return "-"
    if age < 120:
        return f"{age:.0f} s"
    if age < 7200:
        return f"{age / 60:.0f} min"
    return f"{age / 3600:.1f} h"


def cell(value: str | None, style: str = "") -> Text:
    """A table cell from message text: never read as markup, always printable, bounded."""
    return Text("-" if value is None or value == "" else printable(value, CELL_MAX), style=style)


def render_table(rows: list[Row], console: Console) -> None:
    table = Table(title=f"clockfleet: {len(rows)} agents", title_justify="left")
    for name, justify in (
        ("agent", "left"),
        ("region", "left"),
        ("state", "left"),
        ("list (pub/applied)", "right"),
        ("server", "left"),
        ("auth", "left"),
        ("offset", "right"),
        ("delay", "right"),
        ("stratum", "right"),
        ("last report", "right"),
        ("time zone", "left"),
        ("outcome", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        state = cell(r.state, style="green" if r.state == "online" else "red")
        versions = f"{'-' if r.published_version is None else r.published_version}/" + (
            "-" if r.list_version is None else str(r.list_version)
        )
        version_text = Text(versions)
        if r.behind:
            version_text.append(" behind", style="bold yellow")
        offset_style = ""
        if r.offset_s is not None and abs(r.offset_s) > 0.5:
            offset_style = "bold red"
        elif r.offset_s is not None and abs(r.offset_s) > 0.05:
            offset_style = "yellow"
        age = Text(_fmt_age(r.report_age_s))
        if r.stale:
            age.append(" stale", style="bold yellow")
        outcome = cell(r.outcome, style="green" if r.ok else "red")
        table.add_row(
            cell(r.agent),
            cell(r.region),
            state,
            version_text,
            cell(r.server),
            cell(r.auth, style="green" if r.auth == "nts" else ""),
            Text(_fmt_seconds(r.offset_s), style=offset_style),
            _fmt_seconds(r.delay_s),
            "-" if r.stratum is None else str(r.stratum),
            age,
            cell(r.timezone),
            outcome,
        )
    console.print(table)


def write_json(rows: list[Row], out: TextIO) -> None:
    # ensure_ascii (the default, kept on purpose): values stay faithful for scripts, and
    # every control character or escape in them reaches a terminal as a \uXXXX escape.
    json.dump([asdict(r) for r in rows], out, indent=1, ensure_ascii=True)
    out.write("\n")


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("clockfleet status", DESCRIPTION)
    p.add_argument("--region", help="show only this region's agents")
    p.add_argument("--json", action="store_true", help="print a JSON list of objects instead")
    p.add_argument(
        "--stale-after",
        type=float,
        metavar="SECONDS",
        help="mark a report older than this stale (default 2 x the region's poll interval, "
        f"{DEFAULT_POLL_INTERVAL_S} s when the list does not say)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest time to wait for the broker's retained state (default 10)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=0.3,
        metavar="SECONDS",
        help="the snapshot is complete after this long without a new message (default 0.3)",
    )
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
        if args.stale_after is not None and args.stale_after <= 0:
            raise UsageError("--stale-after must be positive")
        if args.wait <= 0 or args.settle < 0:
            raise UsageError("--wait must be positive and --settle not negative")
    except UsageError as exc:
        print(f"clockfleet status: {exc}", file=sys.stderr)
        return 2
    # Refused messages are counted under the table; a log line for each would bury it.
    logging.getLogger("clockfleet.collector").setLevel(logging.ERROR)
    try:
        state = read_fleet(settings, wait_s=args.wait, settle_s=args.settle)
    except BrokerUnreachable as exc:
        print(f"clockfleet status: no broker reachable: {exc}", file=sys.stderr)
        return 2
    rows = build_rows(
        state.snapshot(), now=time.time(), stale_after_s=args.stale_after, region=args.region
    )
    if args.json:
        write_json(rows, sys.stdout)
        return 0
    console = Console() if sys.stdout.isatty() else Console(width=200)
    render_table(rows, console)
    rejected = sum(state.rejected.values())
    if rejected:
        console.print(f"{rejected} retained message(s) refused by strict decoding")
    return 0
