"""A socket stand-in for paho whose reads and writes happen in a thread of its own.

Why: a fresh QoS 0 subscriber to `clock/v1/agents/+/report` gets every retained report in one
burst; Mosquitto drops QoS 0 messages too once more than `max_queued_messages` (default 1000)
wait for a subscriber's socket, and a reader that decodes (~20-50 us a report) as it reads
falls behind and loses reports (measured: ~8,800 of 10,000 known). This link drains the
socket into memory (recv releases the GIL) while we decode at our own pace: the broker
always sees an empty socket. Memory: the burst itself, once (a few MB for 10,000 reports).

QoS 0 PUBLISH packets (everything the collector subscribes to) can skip paho: given
`on_publish`, the link frames the byte stream itself and hands each QoS 0 PUBLISH's topic and
payload straight to it, while every other packet (CONNACK, SUBACK, UNSUBACK, PINGRESP, any
QoS 1 PUBLISH) still goes to paho, in stream order. paho's per-packet path (three or four
recv() calls, an MQTTMessage, topic matching, callbacks) costs ~35 us a message, more than
our strict decode; framing costs ~2 us. Order is kept exactly: once a packet for paho is
framed, nothing after it is handled until paho has read it, so the snapshot fence's UNSUBACK
still comes after the whole retained snapshot.

paho sees a non-blocking socket (paho_socket.py: what it calls): `recv()` serves buffered
bytes or raises BlockingIOError, `send()` queues bytes for the I/O thread, `close()` ends
it. TLS works too: only the I/O thread calls the real socket.

Bounds (a flood or a hostile broker must not grow memory without limit):
- At most `max_buffer` bytes wait in memory (plus one `read_size` chunk being read and one
  packet handed to paho: `memory_bound`). Beyond that the I/O thread stops reading until
  the consumer has taken the buffer below half of it: TCP back-pressure applies and the
  broker queues (for QoS 0, drops by its own limits). Nothing is dropped here.
- No packet larger than `max_packet` is held: a QoS 0 PUBLISH that large cannot carry an
  acceptable payload, so its bytes are discarded as they arrive and `on_refused(topic,
  "oversized")` is called once; any other packet that large (the collector subscribes at
  QoS 0, so only a misbehaving broker sends one) ends the link with an error paho reports.
- A QoS 0 PUBLISH whose topic length runs past its packet, or that is too short to hold one,
  is skipped and reported as "malformed-packet" (paho would raise struct.error on it, out of
  its loop). Framing stops after FRAME_BATCH packets a call so that the collector's loop
  gets back to keepalives and writes during a flood.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from clockfleet.protocol.codec import MAX_PAYLOAD_BYTES

CHUNK = 256 * 1024
# The kernel's own buffer, as a second line: it holds a whole burst of ~10,000 reports even
# while this process's threads wait for the GIL. Linux caps it at net.core.rmem_max (and
# doubles what it grants); asking for more than the cap is harmless.
RCVBUF = 8 * 1024 * 1024
# Several seconds of the fastest retained burst, and a fleet of ~100,000 reports.
MAX_BUFFER = 64 * 1024 * 1024
# The largest QoS 0 PUBLISH that can still carry an acceptable payload: the remaining
# length is a 2-byte topic length, a topic of at most 65535 bytes, then the payload.
MAX_PACKET = 2 + 65535 + MAX_PAYLOAD_BYTES
# Packets framed per recv(); small enough that the caller regains control every ~10 ms.
FRAME_BATCH = 512

OnPublish = Callable[[bytes, bytes], None]
OnRefused = Callable[[bytes, str], None]


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
        # Reading resumes below half the bound: a packet still incomplete must fit there, or
        # neither side could move.
        if max_buffer < 4 * max_packet:
            raise ValueError("max_buffer must be at least 4 x max_packet")
        self._sock = sock
        self._on_publish = on_publish
        self._on_refused = on_refused
        self._max_buffer = max_buffer
        self._low_water = max_buffer // 2
        self._max_packet = max_packet
        self._read_size = read_size  # the most one recv() adds: memory <= max_buffer + this
        self._in = bytearray()  # raw bytes not yet framed (paho's thread only)
        self._more = False  # _in may hold complete packets: framing stopped early
        self._skip = 0  # bytes of an oversized PUBLISH still to discard as they arrive
        self._broken = False  # framing met a packet it cannot hold: nothing more is framed
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
            if self._on_publish is not None:
                cur = self._cur = self._frame()
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
                if self._more or self._chunks:
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

    def _frame(self) -> bytes:
        """Hand QoS 0 PUBLISHes to on_publish; return the next packet for paho, or b"".

        Stops at the first packet for paho, so that everything after it waits until paho
        has read it (see the module docstring on order), and after FRAME_BATCH packets.
        """
        if self._broken:  # nothing more is read from this stream: let the buffer go
            while self._chunks:
                self._took(len(self._chunks.popleft()))
            return b""
        buf = self._in
        while self._chunks:
            buf += self._chunks.popleft()
        pos, n, out = 0, len(buf), b""
        if self._skip:
            pos = min(self._skip, n)
            self._skip -= pos
        deliver = self._on_publish
        assert deliver is not None
        budget = FRAME_BATCH
        while pos < n:
            if not budget:
                break
            budget -= 1
            head = buf[pos]
            length, shift, i = 0, 0, pos + 1
            while i < n and shift <= 21:
                byte = buf[i]
                length |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
            else:
                if shift > 21:  # more than 4 length bytes: no packet boundary can be found again
                    self._give_up(f"a malformed remaining length (type {head >> 4})")
                    pos = n
                break  # the length itself is not complete yet
            end = i + length
            if head & 0xF6 == 0x30:  # PUBLISH at QoS 0, any DUP/RETAIN
                if length > self._max_packet:
                    # Refused with its topic, for the count by kind and the log: wait for the
                    # topic unless it is itself larger than anything we hold.
                    if i + 2 > n:
                        break
                    topic_end = i + 2 + (buf[i] << 8 | buf[i + 1])
                    if topic_end > n and topic_end - pos <= self._max_packet:
                        break
                    self._refuse(bytes(buf[i + 2 : topic_end]) if topic_end <= n else b"")
                    if end > n:
                        self._skip, pos = end - n, n
                        break
                    pos = end
                    continue
                if end > n:
                    break
                topic_end = i + 2 + (buf[i] << 8 | buf[i + 1]) if length >= 2 else end + 1
                if topic_end > end:
                    self._refuse(b"", "malformed-packet")
                    pos = end
                    continue
                pos = end
                deliver(bytes(buf[i + 2 : topic_end]), bytes(buf[topic_end:end]))
                continue
            if length > self._max_packet:
                # The stream cannot be followed past it without holding it.
                self._give_up(
                    f"a packet of {length} bytes (type {head >> 4}); "
                    f"at most {self._max_packet} are accepted"
                )
                pos = n
                break
            if end > n:
                break
            out, pos = bytes(buf[pos:end]), end
            break
        self._more = pos < n and (bool(out) or not budget)
        del buf[:pos]
        self._took(pos)
        return out

    def _give_up(self, what: str) -> None:
        """End the link: paho gets the error from recv() and the collector reconnects."""
        self._broken = True
        self._error = ConnectionError(f"the broker sent {what}")

    def _refuse(self, topic: bytes, reason: str = "oversized") -> None:
        """Report a PUBLISH not handed on (its topic, when known)."""
        if self._on_refused is not None:
            self._on_refused(topic, reason)

    def _took(self, n: int) -> None:
        """n buffered bytes left the buffer; wake the I/O thread if it waits for room."""
        self._consumed += n
        if self._paused and self._rx - self._consumed < self._low_water:
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
        """The most pending() can be: the buffer's bound, one read, one packet for paho."""
        return self._max_buffer + self._read_size + self._max_packet + 5

    def __getattr__(self, name: str) -> Any:
        # Anything else (fileno, getpeername, ...) is the real socket's; paho uses none of it.
        return getattr(self._sock, name)

    # --- what the collector's loop calls ---------------------------------------------------

    def readable(self) -> bool:
        """Buffered bytes, or an end or error paho has yet to see."""
        return (
            self._off < len(self._cur)
            or self._more
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
        held = self._rx - self._consumed
        if not self._paused:
            if held < self._max_buffer:
                return True
            # Paused first, then checked again: a consumer that emptied the buffer between
            # the two sees the flag and wakes us, or we see its progress here.
            self._paused = True
            held = self._rx - self._consumed
        if held < self._low_water:
            self._paused = False
            return True
        return False

    def _read(self) -> bool:
        try:
            # Loop: a TLS socket can hold decrypted bytes that select() does not report.
            while self._rx - self._consumed < self._max_buffer:
                chunk = self._sock.recv(self._read_size)
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
