"""Which hosts sync with authenticated time: /metrics and `clockfleet status` read the chosen
server's `tried` entry (`auth: "nts"`)."""

from __future__ import annotations

import json

from clockfleet.collector.fleet_state import FleetState
from clockfleet.collector.metrics import LinkStats, render
from clockfleet.collector.status import build_rows
from tests.collector.kit import PREFIX, failed_report, report, report_topic

NTS_TRIED = [
    {"host": "time.example.net", "port": 123, "outcome": "ok", "auth": "nts"},
    {"host": "192.0.2.10", "port": 123, "outcome": "not-tried"},
]


def fleet() -> FleetState:
    state = FleetState(PREFIX)
    nts = report("nts-host", server={"host": "time.example.net", "port": 123}, tried=NTS_TRIED)
    failed_over = report(
        "plain-host",
        tried=[
            {"host": "time.example.net", "port": 123, "outcome": "nts-auth-failed", "auth": "nts"},
            {"host": "192.0.2.10", "port": 123, "outcome": "ok"},
        ],
    )
    for agent, body in (("nts-host", nts), ("plain-host", failed_over)):
        state.ingest(report_topic(agent), json.dumps(body).encode())
    state.ingest(report_topic("down"), json.dumps(failed_report("down")).encode())
    return state


def test_metrics_say_which_agents_sync_with_nts() -> None:
    text = render(fleet(), LinkStats()).decode()
    lines = [
        line for line in text.splitlines() if line.startswith("clockfleet_agent_authenticated")
    ]
    assert sorted(lines) == [
        'clockfleet_agent_authenticated{agent="nts-host",region="us-east"} 1.0',
        'clockfleet_agent_authenticated{agent="plain-host",region="us-east"} 0.0',
    ]


def test_status_shows_the_chosen_servers_authentication() -> None:
    rows = {r.agent: r.auth for r in build_rows(fleet().snapshot(), now=0.0)}
    assert rows == {"nts-host": "nts", "plain-host": "none", "down": None}
