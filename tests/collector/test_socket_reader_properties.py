"""Property tests of the socket reader's MQTT framing: whatever bytes the broker's side of
the socket sends (random, truncated, oversized, with lying remaining lengths or topic
lengths), no exception but the socket's own errors leaves recv(), reading ends, and the memory
held never passes the bound. Streams go through a real socket pair, in pieces, from a sender
thread."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clockfleet.collector.socket_reader import BufferedLink
from tests.collector.test_socket_reader import publish, remaining_length

MAX_PACKET = 512
MAX_BUFFER = 4096
READ_SIZE = 1024
HANG_S = 10.0

PROPERTY = settings(
    max_examples=120,
    deadline=None,  # threads and sockets: time per example varies with the machine's load
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Delivered:
    delivered: list[tuple[bytes, bytes]] = field(default_factory=list)
    refused: list[tuple[bytes, str]] = field(default_factory=list)
    to_paho: bytes = b""
    error: OSError | None = None
    most_held: int = 0


def run(stream: bytes, cuts: list[int]) -> Delivered:
    """Send `stream` in pieces (cut at `cuts`), then end it; read as paho does until the
    link reports the end or an error. Fails on a hang or on memory beyond the bound."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    out = Delivered()
    link = BufferedLink(
        ours,
        on_publish=lambda t, p: out.delivered.append((t, p)),
        on_refused=lambda t, reason: out.refused.append((t, reason)),
        max_packet=MAX_PACKET,
        max_buffer=MAX_BUFFER,
        read_size=READ_SIZE,
    )
    bounds = sorted({0, *(c % (len(stream) + 1) for c in cuts), len(stream)})

    def send() -> None:
        try:
            for a, b in itertools.pairwise(bounds):
                theirs.sendall(stream[a:b])
            theirs.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the link gave up on the stream (an error): nothing more to send

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    deadline = time.monotonic() + HANG_S
    received = bytearray()
    time.sleep(0.02)  # a consumer that falls behind: the buffer fills up to its bound
    try:
        while True:
            assert time.monotonic() < deadline, "the link never reported the end"
            out.most_held = max(out.most_held, link.pending())
            try:
                chunk = link.recv(7)  # paho reads in small pieces too
            except BlockingIOError:
                link.wait(0.05)
                continue
            except OSError as exc:
                out.error = exc
                break
            if not chunk:
                break
            received += chunk
    finally:
        link.close()
        theirs.close()
        sender.join(HANG_S)
    out.to_paho = bytes(received)
    assert out.most_held <= link.memory_bound <= MAX_BUFFER + READ_SIZE + MAX_PACKET + 5
    return out


cuts = st.lists(st.integers(min_value=0, max_value=1 << 20), max_size=8)


@PROPERTY
@given(stream=st.binary(max_size=20_000), cuts=cuts)
def test_random_bytes_never_raise_hang_or_pass_the_bound(stream, cuts):
    run(stream, cuts)


topics = st.binary(min_size=1, max_size=40)
payloads = st.one_of(
    st.binary(max_size=300),
    st.integers(min_value=MAX_PACKET, max_value=6 * MAX_BUFFER).map(lambda n: b"z" * n),
)
OTHER_PACKETS = [bytes([0xD0, 0]), bytes([0x90, 3, 0, 1, 0]), bytes([0xB0, 2, 0, 2])]
packets = st.one_of(
    st.tuples(st.just("publish"), topics, payloads),
    st.tuples(st.just("other"), st.sampled_from(OTHER_PACKETS), st.just(b"")),
)


def encode(packet: tuple[str, bytes, bytes]) -> bytes:
    kind, a, b = packet
    if kind == "other":
        return a
    body = len(a).to_bytes(2, "big") + a + b
    return bytes([0x30]) + remaining_length(len(body)) + body


def header_len(packet: tuple[str, bytes, bytes]) -> int:
    return len(encode(packet)) - (len(packet[1]) + len(packet[2]) + 2)


@PROPERTY
@given(items=st.lists(packets, max_size=30), cut=st.integers(min_value=0), pieces=cuts)
def test_a_truncated_stream_delivers_exactly_the_whole_packets_before_the_cut(items, cut, pieces):
    encoded = [encode(p) for p in items]
    stream = b"".join(encoded)
    cut %= len(stream) + 1
    out = run(stream[:cut], pieces)
    delivered, refused, to_paho, pos = [], [], b"", 0
    for packet, data in zip(items, encoded, strict=True):
        kind, a, b = packet
        whole = pos + len(data) <= cut
        if kind == "other":
            if whole:
                to_paho += data
        elif len(data) - header_len(packet) > MAX_PACKET:
            # refused, with its topic, as soon as the topic has arrived; never held whole
            if pos + header_len(packet) + 2 + len(a) <= cut:
                refused.append((a, "oversized"))
        elif whole:
            delivered.append((a, b))
        if not whole:
            break
        pos += len(data)
    assert out.error is None
    assert out.delivered == delivered
    assert out.refused == refused
    assert out.to_paho == to_paho


@PROPERTY
@given(
    items=st.lists(packets, min_size=1, max_size=10),
    which=st.integers(min_value=0),
    claim=st.integers(min_value=0, max_value=268_435_455),
    pieces=cuts,
)
def test_a_lying_remaining_length_never_raises_hangs_or_passes_the_bound(
    items, which, claim, pieces
):
    encoded = [encode(p) for p in items]
    i = which % len(encoded)
    data = encoded[i]
    rest = data[header_len(items[i]) :] if items[i][0] == "publish" else data[2:]
    encoded[i] = data[:1] + remaining_length(claim) + rest
    run(b"".join(encoded), pieces)


@PROPERTY
@given(topic_len=st.integers(min_value=0, max_value=65535), body=st.binary(max_size=200))
def test_a_lying_topic_length_is_refused_never_delivered(topic_len, body):
    packet_body = topic_len.to_bytes(2, "big") + body
    stream = bytes([0x30]) + remaining_length(len(packet_body)) + packet_body
    stream += publish("t/after", b"ok")
    out = run(stream, [])
    if topic_len > len(body):
        assert out.refused == [(b"", "malformed-packet")]
        assert out.delivered == [(b"t/after", b"ok")]
    else:
        assert out.delivered == [(body[:topic_len], body[topic_len:]), (b"t/after", b"ok")]


@settings(max_examples=20, deadline=None)
@given(claim=st.integers(min_value=MAX_PACKET + 1, max_value=268_435_455), extra=cuts)
def test_a_claimed_huge_publish_is_refused_once_and_never_held(claim, extra):
    head = bytes([0x30]) + remaining_length(claim) + (5).to_bytes(2, "big") + b"t/big"
    out = run(head + b"q" * min(claim, 3 * MAX_BUFFER), extra)
    assert out.refused == [(b"t/big", "oversized")]
    assert out.delivered == []
