"""What a report carries about the clock's discipline and the host's zone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from clockfleet.agent.chrony_tracking import parse_tracking_csv
from clockfleet.agent.clock_backends import Applied
from clockfleet.agent.host_zone import read_host_zone
from clockfleet.agent.report import SyncOutcome, build_report
from clockfleet.agent.zone_change import ZoneOutcome
from clockfleet.protocol.messages import ClockState, KernelClock
from tests.agent.test_host_zone import host_root
from tests.agent.test_service_report import WALL, job, probed

# chronyd before its first update: no source, a skew of 2,000,000 ppm, not synchronised.
UNSYNCED = (
    "00000000,,0,0.000000000,0.000000000,0.000000000,0.000000000,0.000,0.000,"
    "2000000.000,1.000000000,1.000000000,0.0,Not synchronised\n"
)


def test_a_chronyd_with_no_estimate_yet_is_reported_as_not_synchronised():
    t = parse_tracking_csv(UNSYNCED)

    assert t.leap == "unsynchronised" and t.skew_ppm == 2_000_000.0


def test_a_clock_state_the_readers_would_refuse_never_costs_the_syncs_report():
    bad = ClockState(kernel=KernelClock(synchronised=True, maxerror_s=-1.0, esterror_s=0, status=0))
    outcome = SyncOutcome(probed(), Applied("chrony", True), None, None, None, clock=bad)

    rep = build_report("a1", job(), outcome, WALL, "0.1.0")

    assert rep.ok and rep.offset_s == 0.25 and rep.clock is None


def test_the_report_carries_the_hosts_offset_by_its_own_rules_at_its_time(tmp_path: Path):
    zone = read_host_zone(host_root(tmp_path, "Europe/Dublin", "Asia/Kolkata"), "Europe/Dublin")
    outcome = SyncOutcome(
        probed(),
        Applied("observe", True),
        "Europe/Dublin",
        None,
        None,
        zone=ZoneOutcome("Europe/Dublin", expected="Europe/Dublin", host_zone=zone),
    )

    rep = build_report("a1", job(), outcome, WALL, "0.1.0")

    assert datetime.fromtimestamp(WALL, UTC).month == 11  # Dublin on GMT: 0 by current rules
    assert (rep.utc_offset_s, rep.tzdata_version) == (19800, "2019c")
    assert (rep.timezone, rep.timezone_expected) == ("Europe/Dublin", "Europe/Dublin")
