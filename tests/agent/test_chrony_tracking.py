"""chronyd's tracking as the agent reads it: real chronyd (-x) clients and servers."""

from __future__ import annotations

import pytest

from clockfleet.agent.chrony_tracking import (
    TrackingError,
    TrackingReader,
    parse_tracking_csv,
    settled_tracking,
)

# `chronyc -n -c tracking` of chronyd 4.3, -x, following a server 2 s ahead of it.
LINE = (
    "7F000029,127.0.0.41,9,1796627169.325637245,-0.000000437,-2.000012875,2.000021219,"
    "0.435,-0.043,3.264,0.000043225,0.000007176,1.0,Normal\n"
)


def test_a_tracking_line_reads_with_chronys_signs():
    t = parse_tracking_csv(LINE)

    assert (t.reference, t.stratum, t.leap) == ("127.0.0.41", 9, "normal")
    assert t.system_time_s == pytest.approx(-0.000000437)
    assert t.last_offset_s == pytest.approx(-2.000012875)
    assert (t.frequency_ppm, t.skew_ppm) == (0.435, 3.264)
    assert t.root_delay_s == pytest.approx(0.000043225)


@pytest.mark.parametrize(
    "line",
    [
        "",
        LINE.replace(",Normal", ",Sideways"),
        LINE.replace("-2.000012875", "nan"),
        LINE.replace("-2.000012875", "1e308"),
        LINE.replace(",Normal", ",Normal,extra"),
        "506 Cannot talk to daemon",
    ],
    ids=["empty", "leap", "nan", "huge", "extra-field", "error-text"],
)
def test_a_line_that_is_not_tracking_is_refused_with_a_reason(line):
    with pytest.raises(TrackingError):
        parse_tracking_csv(line)


def test_tracking_of_a_chronyd_following_a_server_2s_ahead(chrony_server, chrony_client):
    ahead = chrony_server(fake_offset_s=2.0)
    (chrony_client.sourcedir / "t.sources").write_text(
        f"server {ahead.host} port {ahead.port} iburst minpoll 0 maxpoll 0\n"
    )
    assert chrony_client.chronyc("reload", "sources").returncode == 0
    reader = TrackingReader(("chronyc", "-h", str(chrony_client.socket)))

    t = settled_tracking(reader.read, [ahead.host], settle_s=15)

    # chronyd -x cannot step: it measured the 2 s (its clock is behind: local minus true is
    # -2 s) and its System time says what it believes is left to correct.
    assert t.reference == ahead.host and t.leap == "normal"
    assert t.last_offset_s == pytest.approx(-2.0, abs=0.05)


def test_an_unreachable_chronyd_is_an_error_not_an_exception(short_tmp):
    reader = TrackingReader(("chronyc", "-h", str(short_tmp / "no.sock")), timeout_s=5)

    with pytest.raises(TrackingError, match="chronyc tracking"):
        reader.read()
