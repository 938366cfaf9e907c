"""SNTP exchanges with one server address over a connected, non-blocking UDP socket.

The socket is connected, so the kernel delivers only datagrams from the queried address and
port (and reports an ICMP port-unreachable as ECONNREFUSED). Each request carries a fresh
random 64-bit nonce in its transmit field; the real send time T1 stays here. T4 is the
kernel's receive timestamp (SO_TIMESTAMPNS) where Linux offers it.

The exchanges are written as steps (generators) that never block: each yields a `Wait`
(this socket, until this monotonic time) and expects to be resumed when the socket is
readable or the time has come. `run_steps` drives them on the calling thread with poll(2);
the agent's probe drives many of them at once from one selector loop (agent/probe.py), so a
fleet of agents waits on its NTP servers without a thread per query.
"""

from __future__ import annotations

import secrets
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Optional, Protocol, TypeVar, Union

from clockfleet.ntp.checks import (
    KISS_REFUSALS,
    Failure,
    ProbeSettings,
    Sample,
    check_reply,
    gate,
)
from clockfleet.ntp.lookup import SockAddr
from clockfleet.ntp.packet import encode_request

# Python 3.11 does not export it; 35 is SO_TIMESTAMPNS(_OLD) on x86_64 and arm64 Linux,
# delivering a native struct timespec.
SO_TIMESTAMPNS: int | None = getattr(
    socket, "SO_TIMESTAMPNS", 35 if sys.platform.startswith("linux") else None
)
_TIMESPEC = struct.Struct("@qq")
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
_MAX_DATAGRAM = 1024
# Scheduling noise allowed on top of the best delay while waiting for a further sample.
LATE_SLACK_S = 0.01
# A kernel receive stamp is read well under this before we read the clock ourselves.
MAX_KERNEL_LAG_NS = 1_000_000_000


@dataclass(frozen=True)
class BurstResult:
    """Best sample of a burst (lowest delay), and the failure that ended it, if any."""

    sample: Sample | None
    failure: Failure | None
    requests: int


Wait = tuple[socket.socket, float]  # resume me when this socket is readable or at this time
# Checks an answer that passed gate() before it is judged: None to judge it, or why it is
# not an answer to us after all (ignored like a bad origin; final if `final` says so).
Verify = Callable[[bytes], Optional[Failure]]


class Authenticator(Protocol):
    """Seals each request of a burst and verifies its answer (NTS: nts_exchange.py)."""

    def seal(self, request: bytes) -> Union[tuple[bytes, Verify], Failure]:
        """The datagram to send for this 48-byte request and how to verify its answer, or
        the failure that ends the burst (nothing left to seal it with)."""
        ...

    def final(self, failure: Failure) -> bool:
        """Whether a verify failure ends the exchange at once rather than waiting on."""
        ...


def open_socket(family: int, sockaddr: SockAddr) -> tuple[socket.socket, bool]:
    """A non-blocking UDP socket connected to sockaddr; the flag says whether kernel
    timestamps are on."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    kernel_ts = False
    if SO_TIMESTAMPNS is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            kernel_ts = True
        except OSError:
            kernel_ts = False
    try:
        sock.connect(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock, kernel_ts


def exchange_steps(
    sock: socket.socket,
    kernel_ts: bool,
    deadline: float,
    settings: ProbeSettings,
    previous: tuple[int, int] | None = None,
    auth: Authenticator | None = None,
) -> Generator[Wait, None, Sample | Failure]:
    """Send one request and wait (until the monotonic deadline) for its validated answer, as
    steps (see the module docstring).

    Datagrams that are not an answer to this request (unparseable, bad version, wrong origin,
    and with `auth` one that does not verify) are ignored; if nothing else arrives, the last
    such reason is the result.
    """
    nonce = 0
    while nonce == 0:  # zero would mean "no origin" to a server
        nonce = secrets.randbits(64)
    request = encode_request(nonce)
    verify: Verify | None = None
    if auth is not None:
        sealed = auth.seal(request)
        if isinstance(sealed, Failure):
            return sealed
        request, verify = sealed
    t1_ns = time.time_ns()
    try:
        sock.send(request)
    except OSError as e:
        return Failure("unreachable", f"send failed: {e.strerror or e}")
    ignored: Failure | None = None
    while True:
        # The answer cannot be there yet right after the send, nor right after an ignored
        # datagram: wait first, read after.
        yield sock, deadline
        while True:
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(_MAX_DATAGRAM, _ANC_SIZE)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                return Failure("unreachable", "port unreachable (ICMP): connection refused")
            except OSError as e:
                return Failure("unreachable", f"receive failed: {e.strerror or e}")
            t4_ns = _t4(ancdata, kernel_ts)
            verdict = gate(data, nonce)
            if isinstance(verdict, Failure):
                ignored = verdict
                continue
            refused = verify(data) if verify is not None else None
            if refused is not None:
                if auth is not None and auth.final(refused):
                    return refused
                ignored = refused
                continue
            return check_reply(verdict, t1_ns, t4_ns, settings, previous)
        if time.monotonic() >= deadline:
            return ignored or Failure("timeout", "no answer")


def _t4(ancdata: list[tuple[int, int, bytes]], kernel_ts: bool) -> int:
    """Our receive time: the kernel's stamp, unless there is none or it is from another
    clock than our T1 (the wall clock was stepped meanwhile, or time is faked in user space
    as libfaketime does): mixing the two would turn that difference into a bogus offset."""
    now_ns = time.time_ns()
    t4_ns = receive_time_ns(ancdata) if kernel_ts else None
    if t4_ns is None or not 0 <= now_ns - t4_ns <= MAX_KERNEL_LAG_NS:
        return now_ns
    return t4_ns


def sample_burst(
    family: int,
    sockaddr: SockAddr,
    settings: ProbeSettings,
    on_answer: Callable[[], None] | None = None,
    auth: Authenticator | None = None,
) -> BurstResult:
    """Up to settings.samples exchanges back to back within settings.timeout_s."""
    return run_steps(sample_burst_steps(family, sockaddr, settings, on_answer, auth))


def sample_burst_steps(
    family: int,
    sockaddr: SockAddr,
    settings: ProbeSettings,
    on_answer: Callable[[], None] | None = None,
    auth: Authenticator | None = None,
) -> Generator[Wait, None, BurstResult]:
    """sample_burst() as steps (see the module docstring). `on_answer` is called at the
    first good sample: the server is alive, which the staggered probe wants to know early.

    The burst stops at the first failure. DENY or RSTR voids the whole burst (the server
    refuses us); any other failure, RATE included (as chrony does), keeps the samples already
    taken. Once a sample is held, a further answer is awaited only as long as it could still
    beat its delay: a server that drops bursts (ntpd's `limited`) costs no full timeout.
    """
    deadline = time.monotonic() + settings.timeout_s
    try:
        sock, kernel_ts = open_socket(family, sockaddr)
    except OSError as e:
        return BurstResult(None, Failure("unreachable", f"cannot connect: {e.strerror or e}"), 0)
    best: Sample | None = None
    failure: Failure | None = None
    last_stamps: tuple[int, int] | None = None
    requests = 0
    with sock:
        for _ in range(max(1, settings.samples)):
            wait_until = deadline
            if best is not None:
                wait_until = min(deadline, time.monotonic() + best.delay_s + LATE_SLACK_S)
            requests += 1
            result = yield from exchange_steps(
                sock, kernel_ts, wait_until, settings, last_stamps, auth
            )
            if isinstance(result, Failure):
                failure = result
                break
            last_stamps = result.stamps
            if best is None:
                if on_answer is not None:
                    on_answer()
                best = result
            elif result.delay_s < best.delay_s:
                best = result
    if failure is not None and failure.kiss in KISS_REFUSALS:
        best = None
    if failure is not None and failure.outcome == "timeout":
        failure = Failure("timeout", f"no answer in {float(settings.timeout_s)} s")
    return BurstResult(best, failure, requests)


T = TypeVar("T")


def run_steps(steps: Generator[Wait, None, T]) -> T:
    """Drive a *_steps generator to its end on this thread, blocking in poll(2) at each
    Wait (poll, not select: a fleet process holds far more than FD_SETSIZE descriptors)."""
    poller = select.poll()
    watched: int | None = None
    try:
        while True:
            try:
                sock, until = next(steps)
            except StopIteration as done:
                result: T = done.value
                return result
            fd = sock.fileno()
            if fd != watched:
                if watched is not None:
                    poller.unregister(watched)
                poller.register(fd, select.POLLIN)
                watched = fd
            left_ms = max(0.0, until - time.monotonic()) * 1000
            poller.poll(left_ms)
    finally:
        steps.close()


def receive_time_ns(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return int(seconds) * 1_000_000_000 + int(nanoseconds)
    return None
