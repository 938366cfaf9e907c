"""Prometheus metrics built from the fleet state at scrape time.

Nothing exists between scrapes: no per-agent child metric objects, so an agent that is
withdrawn simply is not in the next scrape, and ingest never touches prometheus_client.
One source, `agent_values` per agent, `region_families`, `rollout_families`
(rollout_metrics.py) and `own_families`, and one writer, `MetricsRenderer`: the text
exposition format (exposition.py), with each agent's lines cached until its report or
status changes. `families()` is the same data uncached, as `Family` values: every metric's
name, type and help in one list, and the form the tests compare the writer with (against
prometheus_client's own exposition).

Per agent (labels `agent`, `region`): offset, delay, root distance, stratum, last good sync,
last report time, last report ok, online, applied list version, and an `_info` series with
the chosen server, time zone, list version, software, discipline and canary cohort.
Per region, the rollout's phase and cohort (rollout_metrics.py). Per region: the
published list version and counts of agents, agents behind (`fleet_state.is_behind`, the one
definition of "behind the published list") and agents failing (all three are derivable in
PromQL from the agent series; they are kept because dashboards and alerts read them more
cheaply). The collector's own: messages received by kind, rejected by reason,
ignored by reason, dropped by reason (a flood's excess), handler errors, broker connected,
reconnects.

Label values: every one is escaped as the exposition format requires (exposition.py). Text
that comes from a message is also made printable, and free text (`software`) is cut to
LABEL_TEXT_MAX characters, in `agent_values`, so that /metrics and `families()` show the
same value.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from clockfleet.collector.auth_view import authenticated_value
from clockfleet.collector.clock_metrics import CLOCK_GAUGES, clock_values
from clockfleet.collector.exposition import (
    Family,
    escape_label_value,
    family_header,
    render_text,
)
from clockfleet.collector.fleet_state import FleetState, is_behind
from clockfleet.collector.rollout_metrics import rollout_families
from clockfleet.collector.text import ID_MAX, LABEL_TEXT_MAX, printable
from clockfleet.collector.zone_metrics import (
    TIMEZONE_INFO,
    TIMEZONE_INFO_HELP,
    TIMEZONE_LABELS,
    ZONE_GAUGES,
    timezone_labels,
    zone_values,
)
from clockfleet.protocol.messages import Report, Status

AGENT_LABELS = ("agent", "region")
# An agent polls this often when its region's list names no interval (agent.yaml's default).
DEFAULT_POLL_INTERVAL_S = 3600
# No label whose value changes on every publish (the list version is a gauge of its own):
# each agent keeps its series across list changes.
INFO_LABELS = (
    *("agent", "region", "server", "timezone", "software", "discipline"),
    "cohort",  # "canary" | "rest" under a canary (docs/rollout.md), else ""
)


@dataclass
class LinkStats:
    """What the MQTT side knows about its connection (read at scrape time)."""

    connected: bool = False
    reconnects: int = 0


# The per-agent gauges, in exposition order: (name, help). `agent_values` yields one value
# (or None: no sample) per entry, in this order.
AGENT_GAUGES: tuple[tuple[str, str], ...] = (
    (
        "clockfleet_agent_offset_seconds",
        "Offset of the agent's clock from its chosen NTP server in its last good report "
        "(server minus local)",
    ),
    ("clockfleet_agent_delay_seconds", "Round-trip delay to the chosen server (last report)"),
    (
        "clockfleet_agent_root_distance_seconds",
        "Root delay / 2 + root dispersion of the chosen server (when reported)",
    ),
    ("clockfleet_agent_stratum", "Stratum of the chosen server"),
    (
        "clockfleet_agent_last_sync_success_timestamp_seconds",
        "Time of the last report with a good sync that this collector has seen",
    ),
    (
        "clockfleet_agent_last_report_timestamp_seconds",
        "Time the agent wrote its last report (by its corrected clock)",
    ),
    ("clockfleet_agent_last_report_ok", "1 when the agent's last report was a good sync"),
    (
        "clockfleet_agent_online",
        "1 when the agent's latest status (by session) is online; judge it with the report age",
    ),
    ("clockfleet_agent_list_version", "Version of the region list the agent last applied"),
    (
        "clockfleet_agent_authenticated",
        "1 when the agent's last good sync came from an NTS-authenticated answer, 0 when from "
        "plain NTP (no sample without a good sync)",
    ),
    *CLOCK_GAUGES,
    *ZONE_GAUGES,
    (
        "clockfleet_agent_time_setters",
        "Other time setters the agent found on its host (cron jobs, scripts, timers, services, "
        "a second time daemon; docs/hosts.md); absent when the agent did not look",
    ),
)
_ONLINE = 7  # AGENT_GAUGES' index of clockfleet_agent_online: known without a report
INFO_NAME = "clockfleet_agent_info"
INFO_HELP = "Always 1; the labels describe the agent's last report"
# The info families, in exposition order: (name, help, labels).
INFOS = (
    (INFO_NAME, INFO_HELP, INFO_LABELS),
    (TIMEZONE_INFO, TIMEZONE_INFO_HELP, TIMEZONE_LABELS),
)
Infos = tuple[Optional[tuple[str, ...]], ...]  # one label tuple (or None) per INFOS entry


def agent_values(
    agent: str, report: Report | None, status: Status | None, last_ok_at: float | None
) -> tuple[str, list[float | None], Infos]:
    """(region, one value or None per AGENT_GAUGES entry, label values or None per INFOS)."""
    online = None if status is None else (1.0 if status.state == "online" else 0.0)
    if report is None:
        region = printable((status.region if status is not None else None) or "", ID_MAX)
        values: list[float | None] = [None] * len(AGENT_GAUGES)
        values[_ONLINE] = online
        return region, values, (None, None)
    # Ids are validated, but a label must not depend on that (see the module docstring).
    region = printable(report.region, ID_MAX)
    values = [
        report.offset_s,
        report.delay_s,
        report.root_distance_s,
        report.stratum,
        last_ok_at,
        report.at.timestamp(),
        1.0 if report.ok else 0.0,
        online,
        report.list_version,
        authenticated_value(report),
        *clock_values(report),
        *zone_values(report),
        float(len(report.time_setters)) if report.time_setters is not None else None,
    ]
    server = report.server
    software = report.software or (status.software if status is not None else "")
    info = (
        printable(agent, ID_MAX),
        region,
        # A host is validated, but a zone id (`%...`) may carry anything: never trust it.
        printable(f"{server.host}:{server.port}", 300) if server is not None else "",
        printable(report.timezone or "", LABEL_TEXT_MAX),
        printable(software, LABEL_TEXT_MAX),
        report.discipline,
        report.cohort or "",
    )
    return region, values, (info, timezone_labels(agent, region, report))


def agent_families(state: FleetState) -> list[Family]:
    gauges = [Family(name, "gauge", doc, AGENT_LABELS) for name, doc in AGENT_GAUGES]
    infos = [Family(name, "gauge", doc, labels) for name, doc, labels in INFOS]
    for agent, entry in state.snapshot().agents.items():
        region, values, info_labels = agent_values(
            agent, entry.report, entry.status, entry.last_ok_at
        )
        labels = (printable(agent, ID_MAX), region)
        for family, value in zip(gauges, values, strict=True):
            if value is not None:
                family.samples.append((labels, value))
        for info, label_values in zip(infos, info_labels, strict=True):
            if label_values is not None:
                info.samples.append((label_values, 1.0))
    return [*gauges, *infos]


def region_families(state: FleetState) -> list[Family]:
    snap = state.snapshot()
    published = Family(
        "clockfleet_region_list_version",
        "gauge",
        "Version of the region's published list",
        ("region",),
    )
    agents = Family(
        "clockfleet_region_agents",
        "gauge",
        "Agents known in the region (report or status)",
        ("region",),
    )
    behind = Family(
        "clockfleet_region_agents_behind",
        "gauge",
        "Agents whose last report applied an older list than the published one",
        ("region",),
    )
    failing = Family(
        "clockfleet_region_agents_failing",
        "gauge",
        "Agents whose last report was not a good sync",
        ("region",),
    )
    counts: dict[str, list[int]] = {region: [0, 0, 0] for region in snap.regions}
    for entry in snap.agents.values():
        report = entry.report
        region = report.region if report is not None else entry.region()
        c = counts.get(region)
        if c is None:
            c = counts[region] = [0, 0, 0]
        c[0] += 1
        if report is None:
            continue
        if not report.ok:
            c[2] += 1
        if is_behind(entry, snap.regions):
            c[1] += 1
    for region, servers in snap.regions.items():
        published.samples.append(((printable(region, ID_MAX),), servers.version))
    poll = Family(
        "clockfleet_region_poll_interval_seconds",
        "gauge",
        "The region's poll interval: its published list's, else the agents' default "
        f"({DEFAULT_POLL_INTERVAL_S} s); staleness alerts are multiples of it",
        ("region",),
    )
    for region, (n, n_behind, n_failing) in counts.items():
        label = (printable(region, ID_MAX),)
        agents.samples.append((label, n))
        behind.samples.append((label, n_behind))
        failing.samples.append((label, n_failing))
        listed = snap.regions.get(region)
        interval = listed.poll_interval_s if listed is not None else None
        poll.samples.append((label, float(interval or DEFAULT_POLL_INTERVAL_S)))
    return [published, agents, behind, failing, poll]


def own_families(state: FleetState, link: LinkStats) -> list[Family]:
    def counter(name: str, doc: str, label: str, counts: dict[str, int]) -> Family:
        f = Family(name, "counter", doc, (label,))
        f.samples = [((k,), v) for k, v in list(counts.items())]
        return f

    return [
        counter(
            "clockfleet_collector_messages_received",
            "MQTT messages received, by topic kind (before decoding)",
            "kind",
            state.received,
        ),
        counter(
            "clockfleet_collector_messages_rejected",
            "Messages refused by strict decoding, by reason; the last good state was kept",
            "reason",
            state.rejected,
        ),
        counter(
            "clockfleet_collector_messages_ignored",
            "Valid messages not applied, by reason (a status from an older session)",
            "reason",
            state.ignored,
        ),
        counter(
            "clockfleet_collector_messages_dropped",
            "Messages dropped unread, by reason (rate-limited: over one topic's rate limit)",
            "reason",
            state.dropped,
        ),
        Family(
            "clockfleet_collector_handler_errors",
            "counter",
            "Unexpected errors while handling a message (not a rejection); the loop went on",
            (),
            [((), state.handler_errors)],
        ),
        Family(
            "clockfleet_collector_broker_connected",
            "gauge",
            "1 while connected and subscribed to a broker",
            (),
            [((), 1.0 if link.connected else 0.0)],
        ),
        Family(
            "clockfleet_collector_broker_reconnects",
            "counter",
            "Connections made to a broker after the first one",
            (),
            [((), link.reconnects)],
        ),
    ]


def families(state: FleetState, link: LinkStats) -> list[Family]:
    return [
        *agent_families(state),
        *region_families(state),
        *rollout_families(state),
        *own_families(state, link),
    ]


# --- /metrics: the exposition format, each agent's lines cached --------------------------


_GAUGE_NAMES = tuple(name for name, _ in AGENT_GAUGES)


def _agent_lines(
    agent: str, report: Report | None, status: Status | None, last_ok_at: float | None
) -> list[str]:
    """One exposition line ("" for no sample) per AGENT_GAUGES entry, then per INFOS entry."""
    region, values, infos = agent_values(agent, report, status, last_ok_at)
    # Every label value is escaped, validated ones too: a decoder's gap (a host's zone id)
    # must not be able to end a label and write a series of its own. This runs only when an
    # agent's messages change (the cache), so it costs nothing per scrape. Decoding bounded
    # every value, so repr() is always a valid sample value.
    agent, region = escape_label_value(printable(agent, ID_MAX)), escape_label_value(region)
    labels = f'{{agent="{agent}",region="{region}"}} '
    lines = [
        "" if value is None else f"{name}{labels}{value!r}\n"
        for name, value in zip(_GAUGE_NAMES, values, strict=True)
    ]
    for (name, _, label_names), label_values in zip(INFOS, infos, strict=True):
        if label_values is None:
            lines.append("")
            continue
        pairs = ",".join(
            f'{n}="{escape_label_value(v)}"' for n, v in zip(label_names, label_values, strict=True)
        )
        lines.append(f"{name}{{{pairs}}} 1.0\n")
    return lines


_AGENT_HEADERS = [family_header(name, "gauge", doc) for name, doc in AGENT_GAUGES] + [
    family_header(name, "gauge", doc) for name, doc, _ in INFOS
]
# What an agent's cached lines were made from (its report, status, last good sync), and them.
CachedLines = tuple[Report | None, Status | None, float | None, list[str]]


class MetricsRenderer:
    """/metrics as text, with each agent's lines kept until its report, status or last good
    sync changes: a scrape of 10,000 mostly unchanged agents re-formats only the changed ones.
    The cache holds exactly the agents of the last scrape (bounded by the fleet)."""

    def __init__(self, state: FleetState, link: Callable[[], LinkStats]) -> None:
        self._state = state
        self._link = link
        self._cache: dict[str, CachedLines] = {}
        self._lock = threading.Lock()  # two scrapes at once must not interleave the cache

    def render(self) -> bytes:
        with self._lock:
            return self._render()

    def _render(self) -> bytes:
        snap = self._state.snapshot()
        old = self._cache
        cache: dict[str, CachedLines] = {}
        for agent, entry in snap.agents.items():
            # Read each field once: the ingest thread may replace them meanwhile.
            report, status, last_ok = entry.report, entry.status, entry.last_ok_at
            hit = old.get(agent)
            if hit is None or hit[0] is not report or hit[1] is not status or hit[2] != last_ok:
                hit = (report, status, last_ok, _agent_lines(agent, report, status, last_ok))
            cache[agent] = hit
        self._cache = cache
        all_lines = [hit[3] for hit in cache.values()]
        parts: list[str] = []
        for i, header in enumerate(_AGENT_HEADERS):
            parts.append(header)
            parts.append("".join([lines[i] for lines in all_lines]))
        rest = [
            *region_families(self._state),
            *rollout_families(self._state),
            *own_families(self._state, self._link()),
        ]
        return "".join(parts).encode() + render_text(rest)


def render(state: FleetState, link: LinkStats) -> bytes:
    """One uncached rendering (see MetricsRenderer for the one /metrics keeps)."""
    return MetricsRenderer(state, lambda: link).render()
