"""One pass over an ordered server list, staggered, driven by events on the host's loop.

Queries start in the operator's order. Server i+1's query starts when server i has failed,
or when it has stayed silent past its stagger (KodMemory.stagger_s); a server that answers
within its usual time means no later one is asked. Results are taken strictly in order
(choice.py), so a later server wins only when every earlier one failed. Once the choice is
made, queries still out are dropped.

Nothing here blocks or starts a thread: each server's sample burst is a generator of waits
(clockfleet.ntp.exchange) that the pass resumes when its socket is readable or its time has
come. The host supplies `call_later(delay_s, fn) -> handle.cancel()`, `watch_readable(fd,
fn)` and `unwatch(fd)`: a Fleet's loop (10,000 agents on one thread) or a LocalLoop.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Generator, Sequence
from typing import Optional

from clockfleet.agent.choice import Attempt, Choice, ProbeResult
from clockfleet.agent.loop_host import Cancellable, ProbeHost
from clockfleet.agent.server_memory import KodMemory
from clockfleet.ntp.checks import ProbeSettings
from clockfleet.ntp.exchange import Wait

log = logging.getLogger("clockfleet.agent.probe")

ServerResult = tuple[Attempt, Optional[str]]  # the attempt, and the kiss code received if any
ServerSteps = Generator[Wait, None, ServerResult]  # one server's probe, as steps
StepsFor = Callable[[int, Callable[[], None]], ServerSteps]


class _Server:
    __slots__ = (
        "answered",
        "fd",
        "host",
        "port",
        "result",
        "sock",
        "stagger",
        "started",
        "steps",
        "timer",
    )

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.started = False
        self.answered = False  # a first good sample (or the final result) came
        self.result: Attempt | None = None
        self.steps: Generator[Wait, None, ServerResult] | None = None
        self.sock: socket.socket | None = None  # the socket being watched for it, and its number
        self.fd: int | None = None
        self.timer: Cancellable | None = None  # resumes its steps when their wait runs out
        self.stagger: Cancellable | None = None  # starts the next server if this one is silent


class Pass:
    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        settings: ProbeSettings,
        kod: KodMemory,
        panic_s: float | None,
        steps_for: StepsFor,
        host: ProbeHost,
        done: Callable[[ProbeResult], None],
    ) -> None:
        """`steps_for(i, on_answer)`: server i's probe as steps (probe.probe_server_steps);
        `done(result)` is called once, on the host's loop."""
        self._servers = [_Server(h, p) for h, p in servers]
        self._settings = settings
        self._kod = kod
        self._steps_for = steps_for
        self._host = host
        self._done_cb = done
        self._choice = Choice(settings, panic_s, len(servers))
        self._staggered = settings.stagger_s > 0
        self._launched = 0  # servers[:launched] have been started
        self._taken = 0  # servers[:taken] are in the choice
        self._finished = False

    def start(self) -> None:
        if not self._servers:
            self._finish()
            return
        self._guarded(self._launch, 0)

    # --- each server ----------------------------------------------------------------------

    def _launch(self, i: int) -> None:
        s = self._servers[i]
        s.started = True
        self._launched = max(self._launched, i + 1)
        skipped = self._kod.skip(s.host, s.port)
        if skipped is not None:
            self._result(i, skipped)
            return
        s.steps = self._steps_for(i, lambda: self._answered(i))
        if self._staggered and i + 1 < len(self._servers):
            wait = self._kod.stagger_s(s.host, s.port, self._settings)
            s.stagger = self._host.call_later(wait, lambda: self._guarded(self._stagger_over, i))
        self._step(i)

    def _resume(self, i: int) -> None:
        self._guarded(self._step, i)

    def _step(self, i: int) -> None:
        s = self._servers[i]
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if s.steps is None:  # dropped meanwhile (a reader and a timer in one loop turn)
            return
        try:
            sock, until = s.steps.send(None)
        except StopIteration as end:
            self._forget(s)
            attempt, kiss = end.value
            self._kod.record(attempt, kiss)
            self._result(i, attempt)
            return
        except Exception as exc:  # a bug must end as an outcome, never as a hung sync
            log.exception("probe of %s:%d failed", s.host, s.port)
            self._forget(s)
            self._result(i, _failed(s, exc))
            return
        if sock is not s.sock:
            # The socket before (the last address's) was closed by the steps already, and
            # its number may even be the new socket's: forget it by number, then watch anew.
            self._unwatch(s)
            s.sock, s.fd = sock, sock.fileno()
            self._host.watch_readable(s.fd, lambda: self._resume(i))
        s.timer = self._host.call_later(until - time.monotonic(), lambda: self._resume(i))

    def _answered(self, i: int) -> None:
        s = self._servers[i]
        s.answered = True
        if s.stagger is not None:
            s.stagger.cancel()
            s.stagger = None

    def _stagger_over(self, i: int) -> None:
        s = self._servers[i]
        s.stagger = None
        last = i == self._launched - 1
        if not self._finished and not s.answered and last and self._launched < len(self._servers):
            self._launch(self._launched)

    # --- in order -------------------------------------------------------------------------

    def _result(self, i: int, attempt: Attempt) -> None:
        s = self._servers[i]
        self._answered(i)
        s.result = attempt
        if self._finished:
            return
        n = len(self._servers)
        while self._taken < n and not self._choice.decided:
            taken = self._servers[self._taken].result
            if taken is None:
                break
            self._choice.add(taken)
            self._taken += 1
        if self._choice.decided or self._taken == n:
            self._finish()
        elif self._launched <= self._taken:
            self._launch(self._taken)  # every server started so far is in the choice
        elif self._staggered and i == self._launched - 1 and attempt.outcome != "ok":
            self._launch(self._launched)  # the newest failed while an earlier one is slow

    def _finish(self, failure: Exception | None = None) -> None:
        """The choice is made (or the pass failed: `failure`): every server not yet in it is
        dropped and added as not tried (or failed), and the result handed on."""
        self._finished = True
        for s in self._servers[self._taken :]:
            self._drop(s)
            if failure is not None:
                self._choice.add(_failed(s, failure))
            elif not s.started:
                self._choice.add(Attempt(s.host, s.port, "not-tried"))
            else:  # asked while an earlier server was slow; that one gave the sync
                detail = "asked after a stagger; an earlier server won"
                self._choice.add(Attempt(s.host, s.port, "not-tried", detail))
        self._done_cb(self._choice.result())

    # --- bookkeeping ----------------------------------------------------------------------

    def _drop(self, s: _Server) -> None:
        for handle in (s.timer, s.stagger):
            if handle is not None:
                handle.cancel()
        s.timer = s.stagger = None
        self._unwatch(s)
        if s.steps is not None:
            steps, s.steps = s.steps, None
            steps.close()  # its socket closes here

    def _forget(self, s: _Server) -> None:
        s.steps = None
        self._unwatch(s)

    def _unwatch(self, s: _Server) -> None:
        if s.fd is not None:
            self._host.unwatch(s.fd)
        s.sock, s.fd = None, None

    def _guarded(self, fn: Callable[[int], None], i: int) -> None:
        """Run a step of the pass; should the pass itself fail, the probe still ends, with
        every server not yet in the choice failed, rather than leaving its agent waiting."""
        try:
            fn(i)
        except Exception as exc:
            log.exception("probe pass failed")
            if not self._finished:
                self._finish(failure=exc)


def _failed(s: _Server, exc: Exception) -> Attempt:
    return Attempt(s.host, s.port, "bad-packet", f"probe failed: {exc!r}")
