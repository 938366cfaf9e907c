"""Per-agent series of what the clock discipline achieved: the report's `clock` object.

Named after the exporters operators already know: `_timex_*` as node_exporter's
`node_timex_*` (the kernel's adjtimex state), `_chrony_tracking_*` as chrony_exporter's
`chrony_tracking_*`, plus chrony's leap status (0 normal, 1 insert, 2 delete, 3 not
synchronised, as NTP's leap indicator), which chrony_exporter lacks. An agent whose report
has no `clock` (an agent from before it, or the discipline could not be read) has none of
these series; alerts then judge it as before (config/alerts.yml).
"""

from __future__ import annotations

from clockfleet.protocol.messages import ChronyTracking, ClockState, Report

LEAP_STATUS = {"normal": 0.0, "insert": 1.0, "delete": 2.0, "unsynchronised": 3.0}

# (name, help), in exposition order; clock_values gives one value (or None) per entry.
CLOCK_GAUGES: tuple[tuple[str, str], ...] = (
    (
        "clockfleet_agent_timex_sync_status",
        "1 unless the kernel's adjtimex said TIME_ERROR (node_timex_sync_status), at the report",
    ),
    ("clockfleet_agent_timex_maxerror_seconds", "The kernel's maximum error (adjtimex)"),
    (
        "clockfleet_agent_timex_estimated_error_seconds",
        "The kernel's estimated error (adjtimex)",
    ),
    ("clockfleet_agent_timex_status", "The kernel's clock status bits (adjtimex STA_*)"),
    (
        "clockfleet_agent_chrony_tracking_system_time_seconds",
        "chronyd's correction still to apply to the system clock (positive: the clock is slow)",
    ),
    (
        "clockfleet_agent_chrony_tracking_last_offset_seconds",
        "chronyd's estimate of the local offset at its last clock update (local minus true)",
    ),
    ("clockfleet_agent_chrony_tracking_rms_offset_seconds", "chronyd's RMS of its offsets"),
    (
        "clockfleet_agent_chrony_tracking_frequency_ppms",
        "chronyd's estimate of the clock's frequency error (positive: fast)",
    ),
    (
        "clockfleet_agent_chrony_tracking_skew_ppms",
        "chronyd's error bound on its frequency estimate",
    ),
    ("clockfleet_agent_chrony_tracking_root_delay_seconds", "chronyd's root delay"),
    ("clockfleet_agent_chrony_tracking_root_dispersion_seconds", "chronyd's root dispersion"),
    ("clockfleet_agent_chrony_tracking_stratum", "chronyd's stratum"),
    (
        "clockfleet_agent_chrony_tracking_leap_status",
        "chronyd's leap status: 0 normal, 1 insert, 2 delete, 3 not synchronised",
    ),
    (
        "clockfleet_agent_timesyncd_synchronised",
        "1 when systemd-timesyncd has synchronised the clock since boot",
    ),
    (
        "clockfleet_agent_timesyncd_last_sync_timestamp_seconds",
        "When systemd-timesyncd last synchronised the clock",
    ),
)


def _chrony(t: ChronyTracking | None) -> list[float | None]:
    if t is None:
        return [None] * 9
    return [
        t.system_time_s,
        t.last_offset_s,
        t.rms_offset_s,
        t.frequency_ppm,
        t.skew_ppm,
        t.root_delay_s,
        t.root_dispersion_s,
        float(t.stratum),
        LEAP_STATUS[t.leap],
    ]


def _state_values(c: ClockState) -> list[float | None]:
    k, ts = c.kernel, c.timesyncd
    kernel: list[float | None] = (
        [None] * 4
        if k is None
        else [1.0 if k.synchronised else 0.0, k.maxerror_s, k.esterror_s, float(k.status)]
    )
    timesyncd: list[float | None] = [None, None]
    if ts is not None:
        last = ts.last_sync_at.timestamp() if ts.last_sync_at is not None else None
        timesyncd = [1.0 if ts.synchronised else 0.0, last]
    return [*kernel, *_chrony(c.chrony), *timesyncd]


def clock_values(report: Report | None) -> list[float | None]:
    """One value or None per CLOCK_GAUGES entry."""
    if report is None or report.clock is None:
        return [None] * len(CLOCK_GAUGES)
    return _state_values(report.clock)
