"""The ingest figure's in-process cost per report of each decoding layer (bench/ingest.py)."""

from __future__ import annotations

import time


def per_report_costs(n: int = 20000) -> dict[str, float]:
    """Microseconds per report of each decoding layer, in this process (no MQTT)."""
    import json

    import msgspec

    from bench.mqtt_raw import report_payload
    from clockfleet.collector.fleet_state import FleetState
    from clockfleet.protocol import codec
    from clockfleet.protocol.messages import Report

    payload = report_payload("a1")
    state = FleetState("clock/v1")
    topic = "clock/v1/agents/a1/report"
    cases = {
        "FleetState.ingest (the collector's whole per-report work)": lambda: state.ingest(
            topic, payload, 0.0
        ),
        "codec.decode(Report) (strict decode and checks)": lambda: codec.decode(
            Report, payload, topic_id="a1"
        ),
        "codec.parse_json_object (bytes to JSON object with the contract's checks)": lambda: (
            codec.parse_json_object(payload)
        ),
        "json.loads alone": lambda: json.loads(payload),
        "msgspec.json.decode(payload, type=Report) (typed, no extra checks)": lambda: (
            msgspec.json.decode(payload, type=Report)
        ),
    }
    out = {}
    for name, fn in cases.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        out[name] = (time.perf_counter() - t0) / n * 1e6
    return out
