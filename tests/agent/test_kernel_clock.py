"""The kernel's clock state read for real on this machine, read only (adjtimex modes 0)."""

from __future__ import annotations

import time

from clockfleet.agent import kernel_clock
from clockfleet.agent.clock_state import kernel_state


def test_adjtimex_reads_this_kernels_state_with_its_layout_right():
    timex = kernel_clock.read_timex()

    # Fields far apart in struct timex, each with a value every Linux kernel fixes: a wrong
    # layout (padding, field sizes) would read garbage into at least one of them.
    assert timex.tolerance == kernel_clock.TOLERANCE_500_PPM
    assert abs(timex.time_s - time.time()) < 5
    assert 0 <= timex.maxerror_s <= 16.1 and 0 <= timex.esterror_s <= 16.1
    # The kernel answers TIME_ERROR whenever STA_UNSYNC is set.
    if timex.status & kernel_clock.STA_UNSYNC:
        assert timex.state == kernel_clock.TIME_ERROR and not timex.synchronised


def test_reading_changes_nothing_and_needs_no_privilege_beyond_a_read():
    before = kernel_clock.read_timex()
    after = kernel_clock.read_timex()

    assert (after.state, after.status) == (before.state, before.status)
    assert after.maxerror_s >= before.maxerror_s  # only grows until a daemon resets it


def test_the_reports_kernel_object_says_what_adjtimex_said():
    timex = kernel_clock.read_timex()
    kernel, error = kernel_state()

    assert error is None and kernel is not None
    assert kernel.synchronised == (timex.state != kernel_clock.TIME_ERROR)
    assert kernel.status == timex.status
