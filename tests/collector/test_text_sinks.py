"""Text never becomes structure: each text field of a report, carrying quotes, newlines,
braces, a whole forged series line, ANSI escapes and rich markup, against each sink that
shows it (/metrics, and the same families through prometheus_client's writer as a
reference; the status table, status --json).

Reports are built by hand (msgspec structs are not validated on construction), bypassing
the agent and the decoder: the sinks must hold even for text a decoder let through."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from clockfleet.collector.fleet_state import AgentEntry, FleetState
from clockfleet.collector.metrics import LinkStats, MetricsRenderer
from clockfleet.collector.status import build_rows, render_table, write_json
from clockfleet.collector.text import LABEL_TEXT_MAX
from clockfleet.protocol.messages import Report, Server, Status, Tried
from tests.collector.kit import (
    PREFIX,
    now_iso,
    reference_exposition,
    report,
    report_topic,
    status,
    status_topic,
    wait_until,
)

FORGED = 'clockfleet_agent_offset_seconds{agent="victim",region="us-east"} 99'
HOSTILE = f'x"}} 1\n{FORGED}\n# \\ \x1b[31m[bold]red[/bold]\x1b[0m \u2028 \r end'

FIELDS = ("host", "tried_host", "detail", "error", "note", "software", "status_software",
          "region", "timezone")  # fmt: skip


def hostile_entry(field: str) -> AgentEntry:
    text = {f: HOSTILE if f == field else None for f in FIELDS}
    host = text["host"] or "192.0.2.10"
    rep = Report(
        schema="clock.report/1",
        agent="acme-01",
        region=text["region"] or "us-east",
        list_version=7,
        ok=True,
        discipline="observe",
        at=datetime.now(UTC),
        tried=[
            Tried(
                host=text["tried_host"] or "ntp1.example.net",
                port=123,
                outcome="timeout",
                detail=text["detail"],
            ),
            Tried(host=host, port=123, outcome="ok"),
        ],
        server=Server(host=host, port=123),
        offset_s=0.001,
        delay_s=0.002,
        stratum=2,
        timezone=text["timezone"] or "America/Chicago",
        software=text["software"],
        error=text["error"],
        note=text["note"],
    )
    st = Status(
        schema="clock.status/1",
        agent="acme-01",
        state="online",
        software=text["status_software"] or "0.1.0",
        session=1,
        since=datetime.now(UTC),
        region=text["region"],
    )
    return AgentEntry(report=rep, report_received=0.0, last_ok_at=None, status=st)


def fleet(field: str | None) -> FleetState:
    state = FleetState(PREFIX)
    clean = hostile_entry("none")
    fields = {f: getattr(clean.report, f) for f in Report.__struct_fields__}
    state.agents["good"] = AgentEntry(report=Report(**{**fields, "agent": "good"}))
    state.agents["acme-01"] = hostile_entry(field) if field else clean
    return state


def renderer_text(state: FleetState) -> str:
    return MetricsRenderer(state, LinkStats).render().decode()


def client_text(state: FleetState) -> str:
    return reference_exposition(state)


METRICS_WRITERS: dict[str, Callable[[FleetState], str]] = {
    "renderer": renderer_text,
    "prometheus_client": client_text,
}


def series(text: str) -> list[tuple[str, dict[str, str]]]:
    return [
        (s.name, s.labels)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    ]


@pytest.mark.parametrize("writer", METRICS_WRITERS)
@pytest.mark.parametrize("field", FIELDS)
def test_text_in_a_report_field_never_adds_a_series_to_metrics(field, writer):
    write = METRICS_WRITERS[writer]
    got = series(write(fleet(field)))
    want = series(write(fleet(None)))
    per_agent = [name for name, labels in got if "agent" in labels]
    assert per_agent == [name for name, labels in want if "agent" in labels]
    assert {labels["agent"] for _, labels in got if "agent" in labels} == {"good", "acme-01"}
    # a hostile region is a region of its own (with its text escaped), never a new agent:
    # its agents, behind, failing and poll interval series
    assert len(got) - len(want) == (4 if field == "region" else 0)
    for _, labels in got:
        for value in labels.values():
            assert value.isprintable(), value


@pytest.mark.parametrize("writer", METRICS_WRITERS)
@pytest.mark.parametrize("field", ["software", "status_software"])
def test_free_text_in_a_label_is_bounded(field, writer):
    got = series(METRICS_WRITERS[writer](fleet(field)))
    info = [labels for name, labels in got if name == "clockfleet_agent_info"]
    mine = next(labels for labels in info if labels["agent"] == "acme-01")
    if field == "software" or mine["software"] != "0.1.0":
        assert len(mine["software"]) <= LABEL_TEXT_MAX
        assert mine["software"].startswith('x"} 1\\n')  # escaped, not cut at the quote


def table_text(state: FleetState) -> str:
    out = io.StringIO()
    console = Console(file=out, width=400, color_system=None, force_terminal=False)
    render_table(build_rows(state.snapshot(), now=datetime.now(UTC).timestamp()), console)
    return out.getvalue()


@pytest.mark.parametrize("field", FIELDS)
def test_text_in_a_report_field_reaches_the_status_table_printable_and_uninterpreted(field):
    got = table_text(fleet(field))
    assert got.count("\n") == table_text(fleet(None)).count("\n")
    assert all(line.isprintable() for line in got.splitlines())
    assert "victim" not in got or "\\n" in got  # shown escaped, never on a line of its own
    if "red" in got:
        assert "[bold]red[/bold]" in got  # markup shown as text, not applied


def test_a_hostile_host_is_visible_in_the_status_table_with_its_escapes():
    got = table_text(fleet("host"))
    assert 'x"} 1\\nclockfleet_agent_offset_seconds' in got


@pytest.mark.parametrize("field", FIELDS)
def test_text_in_a_report_field_reaches_status_json_escaped_and_faithful(field):
    state = fleet(field)
    rows = build_rows(state.snapshot(), now=datetime.now(UTC).timestamp())
    out = io.StringIO()
    write_json(rows, out)
    text = out.getvalue()
    assert text.isascii()
    assert all(line.isprintable() for line in text.splitlines())
    back = {row["agent"]: row for row in json.loads(text)}
    entry = state.agents["acme-01"]
    assert back["acme-01"]["region"] == entry.report.region
    assert back["acme-01"]["server"] == f"{entry.report.server.host}:123"
    assert back["acme-01"]["timezone"] == entry.report.timezone


# --- the same through a real broker, for whatever the decoder lets through ----------------

WIRE_CASES = {
    "host": {"server": {"host": f"fe80::1%{HOSTILE}", "port": 123}},
    "tried-host": {"tried": [{"host": f"fe80::1%{HOSTILE}", "port": 123, "outcome": "ok"}]},
    "detail": {
        "tried": [{"host": "192.0.2.10", "port": 123, "outcome": "timeout", "detail": HOSTILE}]
    },
    "error": {"error": HOSTILE},
    "note": {"note": HOSTILE},
    "software": {"software": HOSTILE},
    "region-newline": {"region": "us-east\n"},
}


@pytest.mark.parametrize("changes", WIRE_CASES.values(), ids=WIRE_CASES.keys())
def test_a_published_report_with_a_forged_series_line_does_not_create_that_series(
    running_collector, publisher, changes
):
    c = running_collector
    publisher.publish(report_topic("acme-01"), report("acme-01", **changes))
    publisher.publish(status_topic("acme-01"), status("acme-01", software=HOSTILE))
    publisher.publish(report_topic("good"), report("good", at=now_iso()))
    wait_until(lambda: "good" in c.state.agents, what="the good report")
    got = series(c.scrape_text())
    agents = {labels["agent"] for _, labels in got if "agent" in labels}
    assert agents <= {"good", "acme-01"}
    assert "good" in agents
    assert not [s for s in got if s[0] == "clockfleet_agent_offset_seconds" and
                s[1].get("agent") not in ("good", "acme-01")]  # fmt: skip
