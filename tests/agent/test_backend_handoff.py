"""The chrony and timesyncd backends by the root helper (the package's way): the agent writes
only into its own directory and confirms by the helper's status file.

The helper here is a stand-in thread that answers as packaging/debian/backend-apply does
(its real behaviour under systemd: tests/hosts/test_backends_systemd.py,
test_privileges.py); it never runs chronyc, and neither may the agent (chronyc=/bin/false).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clockfleet.agent.backend_choice import make_backend
from clockfleet.agent.backend_chrony import ChronyBackend
from clockfleet.agent.backend_timesyncd import TimesyncdBackend

CHOSEN = ("192.0.2.10", 123)
LIST = [("192.0.2.9", 123), CHOSEN]


class FakeHelper:
    """Watches `handoff/name` (and `handoff/makestep`) like the path unit; on every change
    answers `answer(content, step)` into the status file, as backend-apply would."""

    def __init__(
        self,
        handoff: Path,
        name: str,
        status: Path,
        answer: Callable[[bytes, str | None], dict[str, Any]],
    ) -> None:
        self.handoff, self.name, self.status, self.answer = handoff, name, status, answer
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _stamp(self) -> tuple:
        out = []
        for n in (self.name, "makestep"):
            try:
                st = (self.handoff / n).stat()
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _watch(self) -> None:
        seen = self._stamp()
        while not self._stop.wait(0.02):
            now = self._stamp()
            if now == seen:
                continue
            seen = now
            try:
                content = (self.handoff / self.name).read_bytes()
            except FileNotFoundError:
                continue
            step_file = self.handoff / "makestep"
            step = step_file.read_text() if step_file.exists() else None
            status = {"sha256": hashlib.sha256(content).hexdigest(), **self.answer(content, step)}
            self.status.write_text(json.dumps(status))
            self.runs += 1

    def __enter__(self) -> FakeHelper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def listing(*addresses: str) -> str:
    return "".join(f"^,?,{a},0,6,0,4294967295,0.0,0.0,0.0\n" for a in addresses)


def answering(**fields: Any) -> Callable[[bytes, str | None], dict[str, Any]]:
    """A helper that answers the same status fields to every hand-over."""

    def answer(content: bytes, step: str | None) -> dict[str, Any]:
        return dict(fields)

    return answer


@pytest.fixture
def chrony(tmp_path: Path) -> Iterator[tuple[ChronyBackend, Path]]:
    handoff, status = tmp_path / "chrony", tmp_path / "chrony.status"
    backend = ChronyBackend(
        sourcedir=handoff, helper_status=status, chronyc="/bin/false", confirm_timeout_s=2
    )
    yield backend, status


def test_defaults_are_the_packages_layout_and_a_socket_means_chronycs_own_way(tmp_path):
    by_helper = make_backend("chrony")
    by_chronyc = make_backend("chrony", socket=str(tmp_path / "c.sock"))

    assert by_helper.by_helper and by_helper.path == Path(
        "/var/lib/clockfleet/chrony/clockfleet.sources"
    )
    assert by_helper.helper_status == Path("/run/clockfleet-agent/chrony.status")
    assert not by_chronyc.by_helper
    assert by_chronyc.path == Path("/etc/chrony/sources.d/clockfleet.sources")
    assert not make_backend("chrony", helper_status=None).by_helper


def test_by_the_helper_the_agent_only_writes_its_directory_and_confirms_by_status(chrony):
    backend, status = chrony
    answer = answering(ok=True, detail="reloaded", sources=listing(*[a for a, _ in LIST]))
    with FakeHelper(backend.path.parent, "clockfleet.sources", status, answer) as helper:
        applied = backend.apply(LIST, CHOSEN, 0.001)

    assert applied.ok, applied.detail
    assert "clockfleet-agent-chrony.service: reloaded" in (applied.detail or "")
    assert "chronyd lists 192.0.2.10:123 (prefer)" in (applied.detail or "")
    assert sorted(p.name for p in backend.path.parent.iterdir()) == ["clockfleet.sources"]
    assert helper.runs >= 1


def test_a_step_is_a_request_with_a_nonce_that_the_helper_must_confirm(chrony):
    backend, status = chrony
    answers: list[str | None] = []

    def answer(content: bytes, step: str | None) -> dict[str, Any]:
        answers.append(step)
        return {"ok": True, "detail": "step armed", "step": step, "sources": listing("192.0.2.10")}

    with FakeHelper(backend.path.parent, "clockfleet.sources", status, answer):
        applied = backend.apply(LIST, CHOSEN, 2.0)
        again = backend.apply(LIST, CHOSEN, 2.0)

    assert applied.ok and again.ok, (applied.detail, again.detail)
    requests = [a for a in answers if a is not None]
    assert requests and all(a.startswith("0.128 ") for a in requests)
    assert len(set(requests)) == 2  # each step its own nonce: the helper arms each once


def test_without_the_step_confirmed_the_apply_is_a_failure(chrony):
    backend, status = chrony
    # A helper that applied the list but never armed the step (an older status's step).
    answer = answering(ok=True, detail="reloaded", step=None, sources=listing("192.0.2.10"))
    with FakeHelper(backend.path.parent, "clockfleet.sources", status, answer):
        applied = backend.apply(LIST, CHOSEN, 2.0)

    assert not applied.ok
    assert "did not apply it within 2 s" in (applied.detail or "")


def test_a_refusal_by_the_helper_is_a_failure_with_its_reason(chrony):
    backend, status = chrony
    answer = answering(ok=False, detail="refused: sources line 2 is not `server HOST port N`")
    with FakeHelper(backend.path.parent, "clockfleet.sources", status, answer):
        applied = backend.apply(LIST, CHOSEN, 0.0)

    assert not applied.ok
    assert "clockfleet-agent-chrony.service: refused: sources line 2" in (applied.detail or "")


def test_no_helper_is_a_failure_naming_it(chrony):
    backend, status = chrony

    applied = backend.apply(LIST, CHOSEN, 0.0)

    assert not applied.ok
    assert f"clockfleet-agent-chrony.service did not apply it within 2 s ({status}: nothing)" in (
        applied.detail or ""
    )


def test_an_unchanged_list_the_helper_never_confirmed_is_handed_over_again(chrony):
    backend, status = chrony
    backend.apply(LIST, CHOSEN, 0.0)  # no helper: written, never confirmed (a reboot's /run)
    before = backend.path.stat().st_ino
    answer = answering(ok=True, detail="reloaded", sources=listing("192.0.2.10"))

    with FakeHelper(backend.path.parent, "clockfleet.sources", status, answer):
        applied = backend.apply(LIST, CHOSEN, 0.0)

    assert applied.ok, applied.detail
    assert applied.detail.startswith("unchanged")
    assert backend.path.stat().st_ino != before  # rewritten: that wakes the path unit


def test_an_unchanged_list_the_helper_confirmed_is_not_handed_over_again(chrony):
    backend, status = chrony
    answer = answering(ok=True, detail="reloaded", sources=listing("192.0.2.10"))
    with FakeHelper(backend.path.parent, "clockfleet.sources", status, answer) as helper:
        assert backend.apply(LIST, CHOSEN, 0.0).ok
        before, runs = backend.path.stat().st_ino, helper.runs

        applied = backend.apply(LIST, CHOSEN, 0.0)
        time.sleep(0.1)

        assert applied.ok, applied.detail
        assert (backend.path.stat().st_ino, helper.runs) == (before, runs)


@pytest.fixture
def timesyncd(tmp_path: Path) -> tuple[TimesyncdBackend, Path]:
    status = tmp_path / "timesyncd.status"
    backend = TimesyncdBackend(
        dropin_dir=tmp_path / "timesyncd", helper_status=status, confirm_timeout_s=2
    )
    return backend, status


def test_timesyncd_defaults_are_the_packages_layout_and_a_command_means_its_own_way():
    by_helper = make_backend("timesyncd")
    by_command = make_backend("timesyncd", restart_command="true")

    assert by_helper.by_helper
    assert by_helper.path == Path("/var/lib/clockfleet/timesyncd/clockfleet.conf")
    assert by_helper.helper_status == Path("/run/clockfleet-agent/timesyncd.status")
    assert not by_command.by_helper
    assert by_command.path == Path("/etc/systemd/timesyncd.conf.d/clockfleet.conf")


def test_timesyncd_by_the_helper_confirms_the_restart_it_reports(timesyncd):
    backend, status = timesyncd
    answer = answering(ok=True, detail="installed; restarted systemd-timesyncd")
    with FakeHelper(backend.path.parent, "clockfleet.conf", status, answer):
        applied = backend.apply(LIST, CHOSEN, 0.0)

    assert applied.ok, applied.detail
    assert "clockfleet-agent-timesyncd.service: installed; restarted" in (applied.detail or "")
    assert "NTP=192.0.2.10 192.0.2.9\n" in backend.path.read_text()


def test_timesyncd_a_failed_restart_is_a_failure_and_the_next_apply_hands_it_over_again(
    timesyncd,
):
    backend, status = timesyncd
    results = iter([False, True])

    def answer(content: bytes, step: str | None) -> dict[str, Any]:
        ok = next(results)
        return {"ok": ok, "detail": "restarted" if ok else "restart failed"}

    with FakeHelper(backend.path.parent, "clockfleet.conf", status, answer):
        failed = backend.apply(LIST, CHOSEN, 0.0)
        retried = backend.apply(LIST, CHOSEN, 0.0)

    assert not failed.ok and "restart failed" in (failed.detail or "")
    assert retried.ok, retried.detail


def test_timesyncd_no_helper_is_a_failure_naming_it(timesyncd):
    backend, status = timesyncd

    applied = backend.apply(LIST, CHOSEN, 0.0)

    assert not applied.ok
    assert f"clockfleet-agent-timesyncd.service did not apply it within 2 s ({status}: " in (
        applied.detail or ""
    )
