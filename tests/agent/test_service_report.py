"""What a report says about one sync (built from probe and backend results, no network)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from clockfleet.agent.clock_backends import Applied
from clockfleet.agent.probe import Attempt, ProbeResult, Sample
from clockfleet.agent.report import SyncJob, SyncOutcome, build_report
from clockfleet.protocol import codec
from clockfleet.protocol.messages import Profile, Report, ServerList

WALL = datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
SERVERS = [("192.0.2.1", 123), ("192.0.2.2", 123)]


def job(timezone: str | None = "Europe/Dublin") -> SyncJob:
    sl = msgspec.convert(
        {
            "schema": "clock.servers/1",
            "region": "r1",
            "version": 7,
            "issued_at": "2026-11-26T11:00:00Z",
            "servers": [{"host": h, "port": p} for h, p in SERVERS],
        },
        ServerList,
    )
    prof = msgspec.convert(
        {
            "schema": "clock.profile/1",
            "agent": "a1",
            "region": "r1",
            "timezone": "Europe/Dublin",
            "version": 3,
            "issued_at": "2026-11-26T11:00:00Z",
        },
        Profile,
    )
    return SyncJob(sl, prof, timezone)


def sample(offset_s: float = 0.25) -> Sample:
    return Sample(offset_s, 0.002, 2, 0, 0.01, 0.005, b"GPS\0")


def probed(ok: bool = True, offset_s: float = 0.25, detail: str = "no answer in 1 s"):
    first = Attempt(*SERVERS[0], "timeout", detail)
    if not ok:
        return ProbeResult(False, None, [first, Attempt(*SERVERS[1], "kod-deny", "DENY")])
    chosen = Attempt(*SERVERS[1], "ok", None, sample(offset_s))
    return ProbeResult(True, chosen, [first, chosen])


def build(result, applied, **kw) -> Report:
    outcome = SyncOutcome(result, applied, kw.pop("tz", "Europe/Dublin"), None, kw.pop("err", None))
    rep = build_report("a1", job(), outcome, WALL, "0.1.0")
    codec.decode(Report, codec.encode(rep), topic_id="a1")  # what readers accept
    return rep


def test_a_good_sync_names_the_chosen_server_and_every_attempt():
    rep = build(probed(), Applied("observe", True, "measured"))
    assert rep.ok and rep.server.host == "192.0.2.2"
    assert (rep.offset_s, rep.delay_s, rep.stratum, rep.leap) == (0.25, 0.002, 2, 0)
    assert rep.root_distance_s == 0.01 / 2 + 0.005
    assert [(t.host, t.outcome) for t in rep.tried] == [
        ("192.0.2.1", "timeout"),
        ("192.0.2.2", "ok"),
    ]
    assert (rep.list_version, rep.profile_version, rep.region) == (7, 3, "r1")


def test_at_is_the_corrected_time_whether_or_not_the_backend_has_stepped_the_clock_yet():
    # sampled at WALL (monotonic 100.0) with +7200 s; the report is built 0.5 s later
    def built(discipline: str, wall_now: float) -> Report:
        outcome = SyncOutcome(
            probed(offset_s=7200.0), Applied(discipline, True), "Europe/Dublin", None, None,
            measured_at=(WALL, 100.0),
        )  # fmt: skip
        return build_report("a1", job(), outcome, wall_now, "0.1.0", mono_now=100.5)

    # chronyd steps when it gets round to it: the host's clock may still be 2 h behind
    assert built("chrony", WALL + 0.5).at.timestamp() == WALL + 7200.5
    # the system backend stepped it already
    assert built("system-step", WALL + 7200.5).at.timestamp() == WALL + 7200.5
    assert built("observe", WALL + 0.5).at.timestamp() == WALL + 7200.5


def test_at_is_written_from_the_corrected_clock_when_only_observing():
    observed = build(probed(offset_s=0.25), Applied("observe", True))
    stepped = build(probed(offset_s=0.25), Applied("system-step", True))
    assert observed.at.timestamp() == WALL + 0.25
    assert stepped.at.timestamp() == WALL  # the clock itself was corrected


def test_a_failed_probe_reports_no_server_and_says_why():
    rep = build(probed(ok=False), None, err="no server in the list gave a valid sync")
    assert rep.ok is False and rep.server is None and rep.discipline == "none"
    assert rep.error == "no server in the list gave a valid sync"
    assert [t.outcome for t in rep.tried] == ["timeout", "kod-deny"]


def test_a_backend_failure_makes_the_sync_fail_but_keeps_the_measurement_in_tried():
    rep = build(probed(), Applied("chrony", False, "chronyd down"), err="backend chrony: down")
    assert rep.ok is False and rep.discipline == "none" and rep.server is None
    assert rep.tried[1].offset_s == 0.25


def test_long_details_are_clipped_so_readers_accept_the_report():
    rep = build(probed(detail="x" * 5000), Applied("observe", True))
    assert len(rep.tried[0].detail) == 256


def test_a_good_sync_applied_unconfirmed_says_so_in_the_report():
    result = probed()
    result.note = "single server: offset 3.2 s applied unconfirmed"
    rep = build(result, Applied("observe", True))
    assert rep.ok and rep.note == "single server: offset 3.2 s applied unconfirmed"


def test_a_failed_sync_carries_no_note_only_its_error():
    result = probed(ok=False)
    result.note = "no server passed"
    rep = build(result, None, err="no server passed")
    assert not rep.ok and rep.note is None and rep.error == "no server passed"
