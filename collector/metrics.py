"""Prometheus metrics built from the fleet state at scrape time.

Nothing exists between scrapes: no per-agent child metric objects, so an agent that is
withdrawn simply is not in the next scrape, and ingest never touches prometheus_client.
`families(state, link)` builds light `Family` records with plain loops; two writers read them:

- `render_text()`: the text exposition format, written directly. This is what /metrics
  serves: prometheus_client's own writer takes ~1 s for 10,000 agents (100,000 samples), this
  one a few tens of milliseconds.
- `FleetCollector`: a prometheus_client custom collector over the same families, for a
  CollectorRegistry (`new_registry`), `generate_latest` and anything else that speaks
  prometheus_client. Tests check that both give the same samples.

Per agent (labels `agent`, `region`): offset, delay, root distance, stratum, last good sync,
last report time, last report ok, online, applied list version, and an `_info` series with
the chosen server, time zone, list version, software and discipline. Per region: the
published list version and counts of agents, agents behind and agents failing (all three are
derivable in PromQL from the agent series; they are kept because dashboards and alerts read
them more cheaply). The collector's own: messages received by kind, rejected by reason,
ignored by reason, broker connected, reconnects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from clockfleet.collector.fleet_state import FleetState
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

AGENT_LABELS = ("agent", "region")
INFO_LABELS = ("agent", "region", "server", "timezone", "list_version", "software", "discipline")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class LinkStats:
    """What the MQTT side knows about its connection (read at scrape time)."""

    connected: bool = False
    reconnects: int = 0


@dataclass(slots=True)
class Family:
    name: str  # without the `_total` suffix for counters, as prometheus_client wants it
    kind: str  # "gauge" or "counter"
    doc: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


def _agent_family(name: str, doc: str) -> Family:
    return Family(name, "gauge", doc, AGENT_LABELS)


def agent_families(state: FleetState) -> list[Family]:
    snap = state.snapshot()
    offset = _agent_family(
        "clockfleet_agent_offset_seconds",
        "Offset of the agent's clock from its chosen NTP server in its last good report "
        "(server minus local)",
    )
    delay = _agent_family(
        "clockfleet_agent_delay_seconds", "Round-trip delay to the chosen server (last report)"
    )
    distance = _agent_family(
        "clockfleet_agent_root_distance_seconds",
        "Root delay / 2 + root dispersion of the chosen server (when reported)",
    )
    stratum = _agent_family("clockfleet_agent_stratum", "Stratum of the chosen server")
    last_ok = _agent_family(
        "clockfleet_agent_last_sync_success_timestamp_seconds",
        "Time of the last report with a good sync that this collector has seen",
    )
    last_report = _agent_family(
        "clockfleet_agent_last_report_timestamp_seconds",
        "Time the agent wrote its last report (by its corrected clock)",
    )
    report_ok = _agent_family(
        "clockfleet_agent_last_report_ok", "1 when the agent's last report was a good sync"
    )
    online = _agent_family(
        "clockfleet_agent_online",
        "1 when the agent's latest status (by session) is online; judge it with the report age",
    )
    list_version = _agent_family(
        "clockfleet_agent_list_version", "Version of the region list the agent last applied"
    )
    info = Family(
        "clockfleet_agent_info",
        "gauge",
        "Always 1; the labels describe the agent's last report",
        INFO_LABELS,
    )
    for agent, entry in snap.agents.items():
        report = entry.report
        status = entry.status
        region = report.region if report is not None else entry.region()
        labels = (agent, region)
        if status is not None:
            online.samples.append((labels, 1.0 if status.state == "online" else 0.0))
        if report is None:
            continue
        if report.offset_s is not None:
            offset.samples.append((labels, report.offset_s))
        if report.delay_s is not None:
            delay.samples.append((labels, report.delay_s))
        if report.root_distance_s is not None:
            distance.samples.append((labels, report.root_distance_s))
        if report.stratum is not None:
            stratum.samples.append((labels, report.stratum))
        if entry.last_ok_at is not None:
            last_ok.samples.append((labels, entry.last_ok_at))
        last_report.samples.append((labels, report.at.timestamp()))
        report_ok.samples.append((labels, 1.0 if report.ok else 0.0))
        list_version.samples.append((labels, report.list_version))
        server = report.server
        software = report.software or (status.software if status is not None else "")
        info.samples.append(
            (
                (
                    agent,
                    region,
                    f"{server.host}:{server.port}" if server is not None else "",
                    report.timezone or "",
                    str(report.list_version),
                    software,
                    report.discipline,
                ),
                1.0,
            )
        )
    return [
        offset,
        delay,
        distance,
        stratum,
        last_ok,
        last_report,
        report_ok,
        online,
        list_version,
        info,
    ]


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
        servers = snap.regions.get(region)
        if servers is not None and report.list_version < servers.version:
            c[1] += 1
    for region, servers in snap.regions.items():
        published.samples.append(((region,), servers.version))
    for region, (n, n_behind, n_failing) in counts.items():
        agents.samples.append(((region,), n))
        behind.samples.append(((region,), n_behind))
        failing.samples.append(((region,), n_failing))
    return [published, agents, behind, failing]


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
    return [*agent_families(state), *region_families(state), *own_families(state, link)]


# --- the text exposition format, written directly ------------------------------------------


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
    return value


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render_text(fams: list[Family]) -> bytes:
    out: list[str] = []
    append = out.append
    for f in fams:
        name = f.name + "_total" if f.kind == "counter" else f.name
        doc = f.doc.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {name} {doc}\n# TYPE {name} {f.kind}\n")
        names = f.labels
        if len(names) == 2 and names == AGENT_LABELS:
            # The hot case (9 families x every agent): ids match [A-Za-z0-9_-], so no
            # escaping, and decoding bounded every value, so repr() is a valid number.
            head = name + '{agent="'
            for (agent, region), value in f.samples:
                append(f'{head}{agent}",region="{region}"}} {value!r}\n')
        elif not names:
            for _, value in f.samples:
                append(f"{name} {_number(value)}\n")
        else:
            for values, value in f.samples:
                labels = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
                append(f"{name}{{{labels}}} {_number(value)}\n")
    return "".join(out).encode()


def render(state: FleetState, link: LinkStats) -> bytes:
    return render_text(families(state, link))


# --- the same families for prometheus_client ----------------------------------------------


class FleetCollector(Collector):
    def __init__(self, state: FleetState, link: Callable[[], LinkStats]) -> None:
        self._state = state
        self._link = link

    def describe(self) -> list[Metric]:
        # Empty: stops the registry from calling collect() at registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        for f in families(self._state, self._link()):
            cls = CounterMetricFamily if f.kind == "counter" else GaugeMetricFamily
            metric = cls(f.name, f.doc, labels=list(f.labels))
            for values, value in f.samples:
                metric.add_metric(list(values), value)
            yield metric


def new_registry(state: FleetState, link: Callable[[], LinkStats]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(state, link))
    return registry
