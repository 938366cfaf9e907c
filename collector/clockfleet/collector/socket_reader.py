"""The socket under the collector's paho client: a stand-in whose reads and writes happen
in a thread of its own (`BufferedLink`).

Why: a fresh QoS 0 subscriber to `clock/v1/agents/+/report` gets every retained report in one
burst; Mosquitto drops QoS 0 messages too once more than `max_queued_messages` (default 1000)
wait for a subscriber's socket, and a reader that decodes (~20-50 us a report) as it reads
falls behind and loses reports (measured: ~8,800 of 10,000 known). This link drains the
socket into memory (recv releases the GIL) while we decode at our own pace: the broker
always sees an empty socket. Memory: the burst itself, once (a few MB for 10,000 reports).

Given `on_publish`, the bytes paho asks for go through a `PacketFramer` first
(packet_framing.py): each QoS 0 PUBLISH goes straight to `on_publish`, and paho reads only the
other packets, in stream order.

paho sees a non-blocking socket (paho_socket.py: what it calls): `recv()` serves buffered
bytes or raises BlockingIOError, `send()` queues bytes for the I/O thread, `close()` ends
it. TLS works too: only the I/O thread calls the real socket.

Bounds (a flood or a hostile broker must not grow memory without limit):
- At most `max_buffer` bytes wait in memory (plus one `read_size` chunk being read and one
  packet handed to paho: `memory_bound`). Beyond that the I/O thread stops reading until
  the consumer has taken the buffer below half of it: TCP back-pressure applies and the
  broker queues (for QoS 0, drops by its own limits). Nothing is dropped here.
- No packet larger than `max_packet` is held (packet_framing.py says how each is refused); a
  stream the framer gives up on ends the link with an error paho reports, and the collector
  reconnects.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass

from clockfleet.collector.packet_framing import MAX_PACKET, OnPublish, OnRefused, PacketFramer

CHUNK = 256 * 1024
# The kernel's own buffer, as a second line: it holds a whole burst of ~10,000 reports even
# while this process's threads wait for the GIL. Linux caps it at net.core.rmem_max (and
# doubles what it grants); asking for more than the cap is harmless.
RCVBUF = 8 * 1024 * 1024
# Several seconds of the fastest retained burst, and a fleet of ~100,000 reports.
MAX_BUFFER = 64 * 1024 * 1024


@dataclass(frozen=True)
class Bounds:
    """What one reader may hold in memory (the module docstring's "Bounds")."""

    max_buffer: int = MAX_BUFFER  # bytes waiting before the I/O thread stops reading
    max_packet: int = MAX_PACKET  # the largest packet held
    read_size: int = CHUNK  # the most one recv() adds

    def __post_init__(self) -> None:
        # Reading resumes below half the bound: a packet still incomplete must fit there, or
        # neither side could move.
        if self.max_buffer < 4 * self.max_packet:
            raise ValueError("max_buffer must be at least 4 x max_packet")

    @property
    def low_water(self) -> int:
        """Once paused, reading resumes below this."""
        return self.max_buffer // 2

    @property
    def memory_bound(self) -> int:
        """The most a reader holds: the buffer's bound, one read, one packet for paho."""
        return self.max_buffer + self.read_size + self.max_packet + 5


class BufferedLink:
    # No locks on the hot path: the I/O thread appends whole chunks to a deque (atomic under
    # the GIL) and paho's thread pops them; paho calls recv() three or four times a message.

    def __init__(
        self,
        sock: socket.socket | ssl.SSLSocket,
        on_publish: OnPublish | None = None,
        *,
        on_refused: OnRefused | None = None,
        max_buffer: int = MAX_BUFFER,
        max_packet: int = MAX_PACKET,
        read_size: int = CHUNK,
    ) -> None:
        self._bounds = Bounds(max_buffer, max_packet, read_size)
        self._sock = sock
        # Used by paho's thread only. None: no fast path, paho reads every packet.
        self._framer = (
            PacketFramer(on_publish, on_refused, max_packet) if on_publish is not None else None
        )
        # Buffered bytes = _rx - _consumed; each counter has a single writer thread, so
        # neither needs a lock.
        self._rx = 0  # I/O thread only
        self._consumed = 0  # paho's thread only
        self._paused = False  # I/O thread only: not reading, the buffer is full
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        self._chunks: deque[bytes] = deque()
        self._cur = b""  # the chunk paho is reading, from _off on (paho's thread only)
        self._off = 0
        self._out: deque[bytes] = deque()
        self._eof = False
        self._error: OSError | None = None
        self._closing = False
        self._arrived = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread = threading.Thread(target=self._run, name="collector-socket", daemon=True)
        self._thread.start()

    # --- what paho calls -------------------------------------------------------------------

    def recv(self, bufsize: int) -> bytes:
        cur, off = self._cur, self._off
        if off >= len(cur):
            if self._framer is not None:
                cur = self._cur = self._frame(self._framer)
            else:
                try:
                    cur = self._cur = self._chunks.popleft()
                except IndexError:
                    cur = self._cur = b""
                self._took(len(cur))
            if not cur:
                # Framing stopped early: packets remain, so neither the end nor an error yet.
                # The I/O thread sets _eof and _error after its last append: read them first,
                # then look for bytes that arrived after _frame() took the chunks.
                eof, error = self._eof, self._error
                if (self._framer is not None and self._framer.more) or self._chunks:
                    raise BlockingIOError from None
                if error is not None:
                    raise error from None
                if eof:
                    return b""
                raise BlockingIOError from None
            off = 0
        end = off + bufsize
        self._off = end
        return cur[off:end]

    def _frame(self, framer: PacketFramer) -> bytes:
        """Frame what has arrived: QoS 0 PUBLISHes go to on_publish; return the next packet
        for paho, or b"" (packet_framing.py: why order is kept)."""
        unframed = framer.unframed
        while self._chunks:
            unframed += self._chunks.popleft()
        followed = framer.broken is None
        out, used = framer.frame()
        self._took(used)
        if followed and framer.broken is not None:  # paho gets it from recv(): we reconnect
            self._error = ConnectionError(f"the broker sent {framer.broken}")
        return out

    def _took(self, n: int) -> None:
        """n buffered bytes left the buffer; wake the I/O thread if it waits for room."""
        self._consumed += n
        if self._paused and self._rx - self._consumed < self._bounds.low_water:
            self._wake()

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self._error is not None:
            raise self._error
        if self._eof or self._closing:
            raise BrokenPipeError("connection closed")
        self._out.append(bytes(data))
        self._wake()
        return len(data)

    def close(self) -> None:
        self._closing = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self._sock.close()
        for s in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    def pending(self) -> int:
        """Bytes held in memory: read from the socket, not yet handed on."""
        return max(0, len(self._cur) - self._off) + self._rx - self._consumed

    @property
    def memory_bound(self) -> int:
        """The most pending() can be."""
        return self._bounds.memory_bound

    # The rest is the real socket's; paho uses none of it once connected (paho_socket.py),
    # but its type for a socket names fileno() and setblocking().

    def fileno(self) -> int:
        return self._sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)

    # --- what the collector's loop calls ---------------------------------------------------

    def readable(self) -> bool:
        """Buffered bytes, or an end or error paho has yet to see."""
        return (
            self._off < len(self._cur)
            or (self._framer is not None and self._framer.more)
            or bool(self._chunks)
            or self._eof
            or self._error is not None
        )

    def wait(self, timeout: float) -> bool:
        self._arrived.clear()  # before the check: an arrival after it sets the event again
        if self.readable():
            return True
        return self._arrived.wait(timeout)

    # --- the I/O thread --------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        unsent = b""
        try:
            sel.register(self._wake_r, selectors.EVENT_READ)
            registered = 0  # the events the socket is registered for (0: not registered)
            reading = True
            while True:
                while self._out:
                    unsent += self._out.popleft()
                if self._closing:
                    self._send(unsent)  # a last DISCONNECT, if paho queued one
                    return
                if not self._eof:
                    resumed = self._flow()
                    if resumed and not reading and not self._read():
                        # A TLS socket may hold decrypted bytes select() will not report.
                        return
                    reading = resumed
                events = (selectors.EVENT_READ if reading and not self._eof else 0) | (
                    selectors.EVENT_WRITE if unsent else 0
                )
                if events != registered:
                    if not registered:
                        sel.register(self._sock, events)
                    elif not events:
                        sel.unregister(self._sock)
                    else:
                        sel.modify(self._sock, events)
                    registered = events
                for key, mask in sel.select(timeout=1.0):
                    if key.fileobj is self._wake_r:
                        with contextlib.suppress(BlockingIOError, OSError):
                            self._wake_r.recv(4096)
                        continue
                    if mask & selectors.EVENT_READ and not self._read():
                        return
                    if mask & selectors.EVENT_WRITE:
                        unsent = self._send(unsent)
                        if self._error is not None:
                            return
        except OSError as exc:
            self._fail(exc)
        finally:
            sel.close()

    def _flow(self) -> bool:
        """Whether to read the socket now: not above the bound, and once paused, not again
        until the buffer is below half of it."""
        held, bounds = self._rx - self._consumed, self._bounds
        if not self._paused:
            if held < bounds.max_buffer:
                return True
            # Paused first, then checked again: a consumer that emptied the buffer between
            # the two sees the flag and wakes us, or we see its progress here.
            self._paused = True
            held = self._rx - self._consumed
        if held < bounds.low_water:
            self._paused = False
            return True
        return False

    def _read(self) -> bool:
        try:
            # Loop: a TLS socket can hold decrypted bytes that select() does not report.
            max_buffer, read_size = self._bounds.max_buffer, self._bounds.read_size
            while self._rx - self._consumed < max_buffer:
                chunk = self._sock.recv(read_size)
                if not chunk:
                    self._eof = True
                    self._arrived.set()
                    return False
                self._chunks.append(chunk)
                self._rx += len(chunk)
                self._arrived.set()
            return True
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return True
        except OSError as exc:
            self._fail(exc)
            return False

    def _send(self, data: bytes) -> bytes:
        """Send what the socket takes now; return the rest."""
        if not data:
            return data
        try:
            n = self._sock.send(data)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return data
        except OSError as exc:
            self._fail(exc)
            return b""
        return data[n:]

    def _fail(self, exc: OSError) -> None:
        if self._error is None:
            self._error = exc
        self._arrived.set()
