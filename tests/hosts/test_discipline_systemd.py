"""The chrony backend of the packaged agent under real systemd, after "stepping the host by
2 s": what the report and the alerts say (issue 20, part 3).

No test may set a clock (containers never get CAP_SYS_TIME, and the kernel's clock is this
machine's), so the step is made the other way round: the region's only server runs 2 s
AHEAD of this machine (libfaketime), as if the host's clock were 2 s behind. The agent's
probe measures +2 s; it hands the list to the container's chronyd (-x: it cannot step, so it
measures the 2 s, logs "Could not step system clock", and keeps them as a correction in its
own bookkeeping, reporting System time ~0 as a chronyd that stepped would). The agent, with
no capability and no access to chronyd's socket, reads chronyd's tracking over its UDP
command port. Shown: ClockfleetAgentDrift, fed by chronyd's tracking through the collector
and Prometheus, stays quiet while the probe's offset series shows the 2 s. Not shown: a
kernel clock really stepped."""

from __future__ import annotations

import json
import urllib.request

import pytest

from clockfleet import devstack
from tests.collector.kit import RunningCollector, prometheus_factory
from tests.helpers import next_loopback_address
from tests.hosts.stack import configure

pytestmark = pytest.mark.slow


def drift_alerts(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=10) as resp:
        groups = json.load(resp)["data"]["groups"]
    return next(r for g in groups for r in g["rules"] if r["name"] == "ClockfleetAgentDrift")[
        "alerts"
    ]


def test_chrony_host_2s_off_reports_chronyds_tracking_and_the_drift_alert_stays_quiet(
    fresh_host, stack
):
    ahead = devstack.start_chronyd_server(
        stack.workdir / "ntp-ahead", address=next_loopback_address(), fake_offset_s=2.0
    )
    collector = RunningCollector(stack.broker)
    try:
        stack.regions["ahead"] = [(ahead.host, ahead.port)]
        host = fresh_host("bookworm")
        # The image closes chronyd's UDP command port (containers share this loopback): open
        # one of its own, which chronyc reaches without privilege for `tracking`.
        cmdport = devstack.free_udp_port("127.0.0.1")
        host.ok(
            f"sed -i 's/^cmdport 0$/cmdport {cmdport}/' /etc/chrony/chrony.conf && "
            "systemctl restart chrony"
        )
        agent_id = "pbx-bookworm-ahead"
        options = {"chronyc": ["chronyc", "-p", str(cmdport)]}
        configure(
            host,
            stack,
            agent_id,
            region="ahead",
            backend="chrony",
            extra={"backend_options": options},
        )

        report = stack.wait_report(
            agent_id,
            lambda r: (
                r["ok"] and (r.get("clock") or {}).get("chrony", {}).get("reference") == ahead.host
            ),
            timeout_s=60,
            host=host,
        )

        assert report["offset_s"] == pytest.approx(2.0, abs=0.1)  # the probe, before
        chrony = report["clock"]["chrony"]
        assert chrony["leap"] == "normal" and abs(chrony["system_time_s"]) < 0.1
        assert "Could not step system clock" in host.ok("journalctl -u chrony --no-pager")
        with prometheus_factory() as start:
            prom = start(f"127.0.0.1:{collector.server.server_port}")
            selector = f'{{agent="{agent_id}"}}'
            error = prom.wait_for(f"clockfleet:agent_clock_error_seconds{selector}", bool)
            assert float(error[0]["value"][1]) < 0.5
            probe = prom.query(f"clockfleet_agent_offset_seconds{selector}")
            assert float(probe[0]["value"][1]) == pytest.approx(2.0, abs=0.1)
            assert drift_alerts(prom.base) == []
    finally:
        collector.stop()
        ahead.stop()
        # The next test's publish must not name a region this test alone had.
        stack.agents.pop("pbx-bookworm-ahead", None)
        stack.regions.pop("ahead", None)
