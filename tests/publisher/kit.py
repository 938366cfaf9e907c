"""What the publisher's tests share besides fixtures: the example fleet file and a reader of
the broker's retained lists and profiles."""

from __future__ import annotations

import json

from clockfleet.devstack.mosquitto import ShippedBroker
from tests.broker.mqttclient import connect

AGENTS = ["acme-01", "acme-02", "globex-02"]

FLEET = """\
defaults:
  poll_interval_s: 3600
  resync_jitter_s: 30
regions:
  us-east:
    timezone: America/New_York
    servers:
      - {host: ntp1.us-east.example.net}
      - {host: 192.0.2.10, port: 123}
  eu-west:
    timezone: Europe/Dublin
    servers: [{host: ntp1.eu-west.example.net}]
agents:
  acme-01: {region: us-east, timezone: America/Chicago}
  globex-02: {region: eu-west}
"""


def retained(b: ShippedBroker) -> dict[str, dict]:
    """Every retained list and profile on the broker, as a reader (the operator) sees it."""
    c = connect(b.daemon.port, "operator", b.password("operator"))
    try:
        c.subscribe(
            "clock/v1/regions/+/servers", "clock/v1/agents/+/profile", "clock/v1/agents/acme-01/cmd"
        )
        c.sync("clock/v1/agents/acme-01/cmd")
        return {m.topic: json.loads(m.payload) for m in c.messages if m.retain and m.payload}
    finally:
        c.close()
