"""`clockfleet_agent_time_setters`: how many other time setters an agent found on its host
(its report's `time_setters`; agent/clockfleet/agent/time_setters.py), the gauge the
ClockfleetAgentCompetingTimeSetters alert reads (config/alerts.yml)."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from clockfleet.collector.fleet_state import FleetState
from clockfleet.collector.metrics import LinkStats, MetricsRenderer
from tests.collector.kit import PREFIX, report

NAME = "clockfleet_agent_time_setters"
CRON = {"kind": "cron", "program": "ntpdate", "source": "/etc/cron.d/ntpdate:1"}
DAEMON = {"kind": "daemon", "program": "ntpd", "source": "ntp.service"}


def gauge(**reports: dict) -> dict[str, float]:
    state = FleetState(PREFIX)
    for agent, body in reports.items():
        state.ingest(f"{PREFIX}/agents/{agent}/report", json.dumps(body).encode())
    text = MetricsRenderer(state, LinkStats).render().decode()
    return {
        s.labels["agent"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == NAME
    }


def test_the_gauge_counts_the_time_setters_an_agent_reported():
    values = gauge(
        a1=report("a1", time_setters=[CRON, DAEMON]),
        a2=report("a2", time_setters=[]),
    )

    assert values == {"a1": 2.0, "a2": 0.0}


def test_an_agent_that_did_not_look_has_no_sample_rather_than_a_zero():
    assert gauge(a1=report("a1")) == {}
