"""Many agents in one process, on ONE selector thread.

paho's `loop_start()` costs a thread and a `select()` per client and breaks past a few hundred
clients in one process. A `Fleet` drives every agent's paho client through paho's external
loop API instead (`on_socket_open/close/register_write/unregister_write` + `loop_read`,
`loop_write`, `loop_misc`), keeps every timer in one heap, and runs blocking work (name
lookups, clock backends, time zones) on a small thread pool so a slow one never stalls MQTT.
NTP queries need no thread: the probe's sockets are watched by this loop too (probe_pass.py).
The single-agent service and `--once` run on the same loop with N = 1.

API:

    fleet = Fleet(workers=8)          # workers=0: run blocking work inline (--once)
    fleet.add(agent)                  # before or after start(); thread-safe
    fleet.start()                     # the loop on its own thread ("clockfleet-fleet")
    fleet.call_soon_threadsafe(fn)    # run fn on the loop thread (e.g. agent.sync_now)
    fleet.stop(timeout_s=5.0)         # agents publish `offline`, disconnect; loop ends
    fleet.run_until(predicate, timeout_s)  # or drive the loop on the calling thread

Everything an agent does runs on the loop thread; only `add`, `call_soon_threadsafe` and
`stop` may be called from other threads. Callbacks that raise are logged and the loop goes on.
Agents of one fleet share a `VerifiedCache`: identical payload bytes on the same topic with
the same trust store are decoded and signature-checked once, not once per agent (on separate
hosts those checks would run in parallel; here they would queue on one thread).

Observe progress with `agent.observers.on_report = fn(agent, report)` (called on the loop
thread after each sync), `agent.reports_made`, `agent.reports_acked`, `agent.counters`,
`agent.connected`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

from clockfleet.agent.full_collections import LoopCollections
from clockfleet.agent.intake import VerifiedCache
from clockfleet.agent.localloop import Timer, TimerHeap, run_inline

T = TypeVar("T")

log = logging.getLogger("clockfleet.agent.fleet")

# paho's keepalive bookkeeping (send PINGREQ, notice a missing PINGRESP). A PINGREQ sent up
# to 5 s late is still far inside the broker's 1.5 x keepalive (45 s at our 30 s), and an
# idle agent then wakes only every 5 s (design: idle CPU ~0, no polling loops).
MISC_INTERVAL_S = 5.0


class _Reader:
    """A socket of an agent's own (an NTP query) the loop watches: fn() when readable."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn


class Fleet:
    def __init__(self, workers: int = 8) -> None:
        self.verified = VerifiedCache()
        self._workers = workers
        self._sel = selectors.DefaultSelector()
        self._timers = TimerHeap()
        self._posted: collections.deque[Callable[[], Any]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._clients: set[mqtt.Client] = set()
        # Clients with bytes to send: written at the top of the next loop turn, and watched
        # for writability only when the kernel would not take it all (rarely): changing a
        # socket's selector registration twice per packet is measurable with 10,000 agents.
        self._to_write: dict[mqtt.Client, None] = {}
        self._watching_write: set[mqtt.Client] = set()
        # Blocking work runs on plain threads reading one queue: a ThreadPoolExecutor's
        # Future (a Condition and a lock each) per sync is measurable CPU with 10,000 agents.
        # jobs for the workers: each runs its function and posts the result back; None stops
        self._work: queue.SimpleQueue[Callable[[], None] | None] | None = None
        if workers > 0:
            self._work = queue.SimpleQueue()
            for i in range(workers):
                t = threading.Thread(target=self._worker, name=f"clockfleet-sync-{i}", daemon=True)
                t.start()
        self.agents: list[Any] = []
        self._thread: threading.Thread | None = None
        self._running = False
        self._stop_requested = False
        self._loop_thread_id: int | None = None
        self._next_misc = 0.0
        self._collections = LoopCollections()  # this loop runs the full ones itself

    # --- the host interface agents use ----------------------------------------------------

    def call_later(self, delay_s: float, fn: Callable[[], Any]) -> Timer:
        return self._timers.add(delay_s, fn)

    def watch_readable(self, fd: int, fn: Callable[[], Any]) -> None:
        """Call fn() on the loop whenever socket `fd` is readable (or has an error), until
        unwatch(fd). Loop thread only; by number, so that unwatch works after a close."""
        self._sel.register(fd, selectors.EVENT_READ, _Reader(fn))

    def unwatch(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(fd)

    def run_blocking(
        self, fn: Callable[[], T], done: Callable[[T | None, BaseException | None], None]
    ) -> None:
        if self._work is None:
            run_inline(fn, done)
            return

        def job() -> None:
            result: T | None = None
            error: BaseException | None = None
            try:
                result = fn()
            except Exception as exc:
                error = exc
            self.call_soon_threadsafe(lambda: done(result, error))

        self._work.put(job)

    def _worker(self) -> None:
        assert self._work is not None
        while True:
            job = self._work.get()
            if job is None:
                return
            job()

    def watch(self, client: mqtt.Client) -> None:
        # Agents run paho's connect() on a worker (it resolves and handshakes), so these can
        # be called off the loop thread: the selector is then changed on the loop, in order.
        client.on_socket_open = self._on_loop(self._socket_open)
        client.on_socket_close = self._on_loop(self._socket_close)
        client.on_socket_register_write = self._on_loop(self._want_write)
        client.on_socket_unregister_write = self._on_loop(self._no_write)

    def _on_loop(self, fn: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            if threading.get_ident() == self._loop_thread_id:
                fn(*args)
            else:
                self.call_soon_threadsafe(lambda: fn(*args))

        return call

    def call_soon_threadsafe(self, fn: Callable[[], Any]) -> None:
        self._posted.append(fn)
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # --- agents ---------------------------------------------------------------------------

    def add(self, agent: Any) -> None:
        """Host `agent`; it starts at once when the loop runs, else with start()."""

        def attach() -> None:
            agent.attach(self)
            self.agents.append(agent)
            if self._running:
                agent.start()

        if self._running and threading.get_ident() != self._loop_thread_id:
            self.call_soon_threadsafe(attach)
        else:
            attach()

    def start(self) -> None:
        """Run the loop on a thread of its own."""
        self._thread = threading.Thread(target=self._run_forever, name="clockfleet-fleet")
        self._thread.daemon = True
        self._begin()
        self._thread.start()

    def _begin(self) -> None:
        self._running = True
        self._collections.start()
        for a in list(self.agents):
            self._guard(a.start)

    def _run_forever(self) -> None:
        self._loop_thread_id = threading.get_ident()
        while not (self._stop_requested and self._all_closed()):
            self._run_once(0.05 if self._stop_requested else MISC_INTERVAL_S)
        self._running = False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Agents publish `offline` and disconnect; returns when their sockets are closed."""

        def begin_stop() -> None:
            for a in self.agents:
                self._guard(a.stop)
            self._stop_deadline = time.monotonic() + timeout_s
            self._stop_requested = True

        if self._thread is not None and self._thread.is_alive():
            self.call_soon_threadsafe(begin_stop)
            self._thread.join(timeout_s + 1.0)
        else:
            begin_stop()
            self.run_until(self._all_closed, timeout_s)
        self.close()

    def close(self) -> None:
        self._collections.stop()
        if self._work is not None:
            while True:  # work not yet started is dropped, as the agents are gone
                try:
                    self._work.get_nowait()
                except queue.Empty:
                    break
            for _ in range(self._workers):
                self._work.put(None)
        with contextlib.suppress(Exception):
            self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _all_closed(self) -> bool:
        if getattr(self, "_stop_deadline", None) and time.monotonic() > self._stop_deadline:
            return True
        return not self._clients

    def run_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Drive the loop on the calling thread until predicate() or the timeout."""
        self._loop_thread_id = threading.get_ident()
        if not self._running:
            self._begin()
        deadline = time.monotonic() + timeout_s
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._run_once(min(left, MISC_INTERVAL_S))
        return True

    # --- the loop -------------------------------------------------------------------------

    def _write_pending(self) -> bool:
        """Write what clients hold; whether a socket closed meanwhile (a DISCONNECT sent)."""
        closed = False
        while self._to_write:
            client = next(iter(self._to_write))
            del self._to_write[client]
            if client.socket() is None:
                continue
            self._guard(client.loop_write)
            sock = client.socket()
            closed = closed or sock is None
            if sock is not None and client.want_write() and client not in self._watching_write:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)
                    self._watching_write.add(client)
        return closed

    def _run_once(self, max_wait_s: float) -> None:
        # A socket closed by its last write may be what run_until's predicate waits for:
        # this turn must not block then (--once waited a whole second after its DISCONNECT)
        closed = self._write_pending()
        now = time.monotonic()
        wait = max_wait_s
        if self._posted or closed:
            wait = 0.0
        else:
            due = self._timers.next_due()
            if due is not None:
                wait = min(wait, max(0.0, due - now))
        wait = min(wait, max(0.0, self._next_misc - now))
        events = self._sel.select(wait)
        self._collections.after_turn(quiet=not events and wait > 0)
        for key, mask in events:
            client = key.data
            if client is None:
                with contextlib.suppress(BlockingIOError, OSError):
                    while self._wake_r.recv(4096):
                        pass
                continue
            if type(client) is _Reader:
                self._guard(client.fn)
                continue
            if mask & selectors.EVENT_READ:
                self._guard(client.loop_read)
                sock = client.socket()
                # TLS may hold decrypted bytes the selector cannot see
                while sock is not None and hasattr(sock, "pending") and sock.pending():
                    self._guard(client.loop_read)
                    sock = client.socket()
            if mask & selectors.EVENT_WRITE and client.socket() is key.fileobj:
                self._guard(client.loop_write)
        while self._posted:
            self._guard(self._posted.popleft())
        now = time.monotonic()
        self._timers.run_due(self._guard)
        if now >= self._next_misc:
            self._next_misc = now + MISC_INTERVAL_S
            for c in list(self._clients):
                self._guard(c.loop_misc)

    def _guard(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:
            log.exception("callback failed; the loop goes on")

    # --- paho's socket callbacks ----------------------------------------------------------

    def _socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._clients.add(client)
        # MQTT packets are small and answered one by one (SUBSCRIBE, PUBLISH after PUBACK):
        # with Nagle on, each waits for the broker's delayed ACK (~40 ms on Linux).
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._clients.discard(client)
        self._to_write.pop(client, None)
        self._watching_write.discard(client)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)

    def _want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._to_write[client] = None

    def _no_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._to_write.pop(client, None)
        if client in self._watching_write:
            self._watching_write.discard(client)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.modify(sock, selectors.EVENT_READ, client)
