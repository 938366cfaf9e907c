"""The collector's own MQTT framing: each QoS 0 PUBLISH of the byte stream goes straight to
the fast path, every other packet to paho, in stream order.

Why: everything the collector subscribes to arrives as QoS 0 PUBLISHes. paho's per-packet
path (three or four recv() calls, an MQTTMessage, topic matching, callbacks) costs ~35 us a
message, more than our strict decode; framing here costs ~2 us. Every other packet (CONNACK,
SUBACK, UNSUBACK, PINGRESP, any QoS 1 PUBLISH) still goes to paho. Order is kept exactly:
framing stops at the first packet for paho, and nothing after it is framed until paho has
read it, so the snapshot fence's UNSUBACK still comes after the whole retained snapshot.

The layout read is MQTT 3.1.1's (a PUBLISH has no properties): the collector frames only
sessions of that protocol (ingest.py).

What a hostile or broken stream cannot do here:
- make us hold a packet larger than `max_packet`: a QoS 0 PUBLISH that large cannot carry an
  acceptable payload, so it is refused by its topic (`on_refused(topic, "oversized")`, once)
  and its bytes are discarded as they arrive; any other packet that large cannot be followed
  without holding it, so the stream is given up (`broken`);
- hand paho a PUBLISH paho cannot parse: one whose topic length runs past its packet (or too
  short to hold one) is skipped and refused as "malformed-packet" (paho raised struct.error
  on it, out of its loop);
- keep the caller busy: framing stops after FRAME_BATCH packets a call (`more` says so), so
  that the collector's loop gets back to its keepalives and writes during a flood.
A remaining length of more than 4 bytes leaves no packet boundary to find again: the stream
is given up.
"""

from __future__ import annotations

from collections.abc import Callable

from clockfleet.protocol.codec import MAX_PAYLOAD_BYTES

# The largest QoS 0 PUBLISH that can still carry an acceptable payload: the remaining
# length is a 2-byte topic length, a topic of at most 65535 bytes, then the payload.
MAX_PACKET = 2 + 65535 + MAX_PAYLOAD_BYTES
# Packets framed per call; small enough that the caller regains control every ~10 ms.
FRAME_BATCH = 512

OnPublish = Callable[[bytes, bytes], None]
OnRefused = Callable[[bytes, str], None]


class PacketFramer:
    """Frames the bytes in `unframed` (the caller appends what arrives; only one thread
    uses a framer)."""

    def __init__(
        self,
        on_publish: OnPublish,
        on_refused: OnRefused | None = None,
        max_packet: int = MAX_PACKET,
    ) -> None:
        self.on_publish = on_publish
        self.on_refused = on_refused
        self.max_packet = max_packet
        self.unframed = bytearray()
        self.more = False  # `unframed` may hold complete packets: framing stopped early
        self.broken: str | None = None  # what the broker sent that cannot be followed
        self._skip = 0  # bytes of an oversized PUBLISH still to discard as they arrive

    def frame(self) -> tuple[bytes, int]:
        """Hand each QoS 0 PUBLISH to on_publish; return the next packet for paho (or b"")
        and how many bytes left `unframed`. Once `broken`, every byte is let go unread."""
        buf = self.unframed
        if self.broken is not None:
            n = len(buf)
            del buf[:]
            return b"", n
        n, out = len(buf), b""
        pos = min(self._skip, n)  # what is left of an oversized PUBLISH goes unread
        self._skip -= pos
        deliver, max_packet = self.on_publish, self.max_packet
        budget = FRAME_BATCH
        while pos < n and budget:
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
                    self.broken = f"a malformed remaining length (type {head >> 4})"
                    pos = n
                break  # the length itself is not complete yet
            end = i + length
            if head & 0xF6 == 0x30:  # PUBLISH at QoS 0, any DUP/RETAIN
                if length > max_packet:
                    after = self._refuse_oversized(buf, pos, i, end)
                    if after < 0:
                        break
                    pos = after
                    continue
                if end > n:
                    break
                topic_end = i + 2 + (buf[i] << 8 | buf[i + 1]) if length >= 2 else end + 1
                pos = end
                if topic_end > end:
                    self._refuse(b"", "malformed-packet")
                    continue
                deliver(bytes(buf[i + 2 : topic_end]), bytes(buf[topic_end:end]))
                continue
            if length > max_packet:  # the stream cannot be followed past it without holding it
                self.broken = (
                    f"a packet of {length} bytes (type {head >> 4}); "
                    f"at most {max_packet} are accepted"
                )
                pos = n
                break
            if end > n:
                break
            out, pos = bytes(buf[pos:end]), end
            break
        self.more = pos < n and (bool(out) or not budget)
        del buf[:pos]
        return out, pos

    def _refuse_oversized(self, buf: bytearray, pos: int, i: int, end: int) -> int:
        """Refuse the QoS 0 PUBLISH at `pos` (its topic length at `i`) that is too large to
        hold, and discard its bytes as they arrive. Returns where framing goes on, or -1 to
        wait for more bytes: it is refused with its topic, for the count by kind and the
        log, so it waits for the topic unless that is itself larger than anything we hold."""
        n = len(buf)
        if i + 2 > n:
            return -1
        topic_end = i + 2 + (buf[i] << 8 | buf[i + 1])
        if topic_end > n and topic_end - pos <= self.max_packet:
            return -1
        self._refuse(bytes(buf[i + 2 : topic_end]) if topic_end <= n else b"", "oversized")
        if end > n:
            self._skip = end - n
            return n
        return end

    def _refuse(self, topic: bytes, reason: str) -> None:
        """Report a PUBLISH not handed on (its topic, when known)."""
        if self.on_refused is not None:
            self.on_refused(topic, reason)
