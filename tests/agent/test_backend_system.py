"""The system backend: step-vs-slew, the CAP_SYS_TIME check, and failures.

No test here may change this machine's clock: the decision is a pure function, apply() gets
a recording syscall layer, and the real syscalls only run in a subprocess that has proved it
lacks CAP_SYS_TIME (so the kernel refuses them).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clockfleet.agent.backend_choice import make_backend
from clockfleet.agent.backend_system import SystemBackend, choose_adjustment, has_capability
from clockfleet.agent.clock_backends import DEFAULT_STEP_THRESHOLD_S

CHOSEN = ("192.0.2.10", 123)


class RecordingClock:
    """Stands in for the kernel so no test moves the real clock."""

    def __init__(self, error: OSError | None = None) -> None:
        self.calls: list[tuple[str, float]] = []
        self.error = error

    def step(self, offset_s: float) -> None:
        self.calls.append(("step", offset_s))
        if self.error:
            raise self.error

    def slew(self, offset_s: float) -> None:
        self.calls.append(("slew", offset_s))
        if self.error:
            raise self.error


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0.0, "system-slew"),
        (0.05, "system-slew"),
        (-0.128, "system-slew"),
        (0.1281, "system-step"),
        (-0.2, "system-step"),
        (30.0, "system-step"),
    ],
)
def test_steps_past_the_threshold_and_slews_within_it(offset, expected):
    assert choose_adjustment(offset, DEFAULT_STEP_THRESHOLD_S) == expected


def test_large_offset_is_stepped_by_that_offset():
    clock = RecordingClock()

    applied = SystemBackend(syscalls=clock).apply([CHOSEN], CHOSEN, -2.5)

    assert applied == applied.__class__("system-step", True, applied.detail)
    assert clock.calls == [("step", -2.5)]


def test_small_offset_is_slewed_by_that_offset():
    clock = RecordingClock()

    applied = SystemBackend(syscalls=clock).apply([CHOSEN], CHOSEN, 0.003)

    assert (applied.discipline, applied.ok) == ("system-slew", True)
    assert clock.calls == [("slew", 0.003)]


def test_threshold_is_configurable():
    clock = RecordingClock()

    SystemBackend(step_threshold_s=1.0, syscalls=clock).apply([CHOSEN], CHOSEN, 0.5)

    assert clock.calls == [("slew", 0.5)]


def test_refused_syscall_is_reported_not_raised():
    clock = RecordingClock(OSError(errno.EPERM, "Operation not permitted"))

    applied = SystemBackend(syscalls=clock).apply([CHOSEN], CHOSEN, 1.0)

    assert not applied.ok
    assert applied.ok is False
    assert "needs CAP_SYS_TIME" in (applied.detail or "")


def test_capability_bit_25_is_read_from_capeff():
    with_it = "Name:\tx\nCapInh:\t0\nCapEff:\t0000000002000000\n"
    without = "CapEff:\t000001fffcffffff\n"

    assert has_capability(with_it)
    assert not has_capability(without)
    assert not has_capability("Name:\tno cap lines\n")


def test_check_refuses_from_a_status_without_cap_sys_time(tmp_path):
    status = tmp_path / "status"
    status.write_text("CapEff:\t000001fffcffffff\n")

    problem = SystemBackend(proc_status=status).check()

    assert problem is not None and "CAP_SYS_TIME" in problem


def _drop_cap_sys_time() -> list[str]:
    if shutil.which("capsh"):
        return ["capsh", "--drop=cap_sys_time", "--"]
    if shutil.which("setpriv"):
        return ["setpriv", "--inh-caps=-sys_time", "--bounding-set=-sys_time"]
    pytest.skip("neither capsh nor setpriv to drop CAP_SYS_TIME")


def _run_without_cap_sys_time(code: str) -> subprocess.CompletedProcess[str]:
    prefix = _drop_cap_sys_time()
    command = [sys.executable, "-c", code]
    if prefix[0] == "capsh":  # capsh runs bash after "--": let it exec the command as given
        command = ["-c", 'exec "$@"', "sh", *command]
    return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)


def test_check_refuses_in_a_process_without_cap_sys_time():
    r = _run_without_cap_sys_time(
        "from clockfleet.agent.backend_system import SystemBackend;print(SystemBackend().check())"
    )

    assert r.returncode == 0, r.stderr
    assert "lacks CAP_SYS_TIME" in r.stdout


# Runs the real syscall layer, but only after proving the kernel will refuse it.
_REAL_SYSCALLS_REFUSED = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from clockfleet.agent.backend_system import SystemBackend, has_capability
    if has_capability(Path("/proc/self/status").read_text()):
        sys.exit("still has CAP_SYS_TIME: refusing to call the real clock syscalls")
    for offset in (5.0, 0.01):
        a = SystemBackend().apply([("192.0.2.10", 123)], ("192.0.2.10", 123), offset)
        print(a.discipline, a.ok, a.detail)
    """
)


def test_real_syscalls_without_cap_sys_time_fail_cleanly():
    r = _run_without_cap_sys_time(_REAL_SYSCALLS_REFUSED)

    assert r.returncode == 0, r.stderr
    step, slew = r.stdout.splitlines()
    assert step.startswith("system-step False") and "CAP_SYS_TIME" in step
    assert slew.startswith("system-slew False") and "CAP_SYS_TIME" in slew


def test_check_passes_with_cap_sys_time():
    if not has_capability(Path("/proc/self/status").read_text()):
        pytest.skip("this test process has no CAP_SYS_TIME")

    assert make_backend("system").check() is None


def test_unknown_backend_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="observe, chrony, timesyncd, system"):
        make_backend("ntpd")


def test_observe_backend_reports_without_touching_anything():
    applied = make_backend("observe").apply([CHOSEN], CHOSEN, 0.25)

    assert (applied.discipline, applied.ok) == ("observe", True)
    assert "+0.250000" in (applied.detail or "")


def test_in_process_the_real_syscalls_are_guarded():
    # tests/agent/conftest.py: even a test that forgets to inject a clock cannot move it.
    applied = SystemBackend().apply([CHOSEN], CHOSEN, 5.0)

    assert not applied.ok
    assert "tests never change this machine's clock" in (applied.detail or "")


def test_every_discipline_a_backend_reports_is_in_the_wire_contract(tmp_path):
    from clockfleet.protocol.messages import DISCIPLINES

    reported = {
        make_backend("observe").apply([CHOSEN], CHOSEN, 0.0).discipline,
        SystemBackend(syscalls=RecordingClock()).apply([CHOSEN], CHOSEN, 1.0).discipline,
        SystemBackend(syscalls=RecordingClock()).apply([CHOSEN], CHOSEN, 0.0).discipline,
        make_backend("chrony", sourcedir=tmp_path).name,
        make_backend("timesyncd", dropin_dir=tmp_path).name,
    }

    # "none" is what a report of a failed sync says (report.py), never a backend's own word
    assert reported | {"none"} == set(DISCIPLINES)
