"""The socket reader (BufferedLink, with its PacketFramer) hands QoS 0 PUBLISHes to the
collector itself and every other packet to paho, in stream order (the UNSUBACK fence depends
on it), and holds no more than its bounds."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from clockfleet.collector.packet_framing import FRAME_BATCH
from clockfleet.collector.socket_reader import BufferedLink


def publish(topic: str, payload: bytes, qos: int = 0, retain: bool = True) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode()
    if qos:
        body += (7).to_bytes(2, "big")  # packet id
    body += payload
    return bytes([0x30 | qos << 1 | retain]) + remaining_length(len(body)) + body


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


SUBACK = bytes([0x90, 3, 0, 1, 0])
UNSUBACK = bytes([0xB0, 2, 0, 2])


@pytest.fixture
def wire():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got: list[tuple[str, bytes]] = []
    link = BufferedLink(ours, on_publish=lambda t, p: got.append((t.decode(), p)))
    yield link, theirs, got
    link.close()
    theirs.close()


def feed(link: BufferedLink, theirs: socket.socket, data: bytes) -> None:
    before = link.pending()
    theirs.sendall(data)
    deadline = time.monotonic() + 5
    while link.pending() < before + len(data) and time.monotonic() < deadline:
        time.sleep(0.001)


def paho_reads(link: BufferedLink) -> bytes:
    """Everything paho would get from recv() now."""
    out = b""
    while True:
        try:
            chunk = link.recv(4096)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_qos0_publishes_skip_paho_and_keep_topic_and_payload(wire):
    link, theirs, got = wire
    feed(link, theirs, publish("c/agents/a1/report", b'{"x":1}') + publish("c/a/b", b""))
    assert paho_reads(link) == b""
    assert got == [("c/agents/a1/report", b'{"x":1}'), ("c/a/b", b"")]


def test_other_packets_go_to_paho_and_later_publishes_wait_for_them(wire):
    link, theirs, got = wire
    feed(link, theirs, publish("t/1", b"a") + UNSUBACK + publish("t/2", b"b"))
    assert link.recv(1) == UNSUBACK[:1]  # paho starts reading the UNSUBACK...
    assert got == [("t/1", b"a")]  # ...and what follows it is not handled yet
    assert link.recv(64) == UNSUBACK[1:]
    assert link.readable()
    assert paho_reads(link) == b""
    assert got == [("t/1", b"a"), ("t/2", b"b")]


def test_a_qos1_publish_goes_to_paho(wire):
    link, theirs, got = wire
    packet = publish("t/q1", b"p", qos=1)
    feed(link, theirs, packet + SUBACK)
    assert paho_reads(link) == packet + SUBACK
    assert got == []


def test_a_packet_split_across_arrivals_is_delivered_once_whole(wire):
    link, theirs, got = wire
    packet = publish("t/split", b"x" * 300)  # a two-byte remaining length
    feed(link, theirs, packet[:2])
    assert paho_reads(link) == b"" and got == []
    feed(link, theirs, packet[2:150])
    assert paho_reads(link) == b"" and got == []
    feed(link, theirs, packet[150:])
    paho_reads(link)
    assert got == [("t/split", b"x" * 300)]


def test_a_malformed_remaining_length_ends_the_link_with_an_error(wire):
    link, theirs, got = wire
    feed(link, theirs, publish("t/1", b"a") + bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))
    with pytest.raises(ConnectionError, match="malformed remaining length"):
        link.recv(1)
    assert got == [("t/1", b"a")]


# --- bounds: what a hostile or flooding broker cannot make the link do -------------------


@pytest.fixture
def small_wire():
    """A link with small bounds (max_packet 1 KiB, max_buffer 8 KiB), recording refusals."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    got: list[tuple[str, bytes]] = []
    refused: list[tuple[bytes, str]] = []
    link = BufferedLink(
        ours,
        on_publish=lambda t, p: got.append((t.decode(), p)),
        on_refused=lambda t, reason: refused.append((t, reason)),
        max_packet=1024,
        max_buffer=8192,
    )
    yield link, theirs, got, refused
    link.close()
    theirs.close()


def test_an_oversized_publish_is_refused_with_its_topic_and_what_follows_is_delivered(small_wire):
    link, theirs, got, refused = small_wire
    feed(link, theirs, publish("t/big", b"x" * 5000) + publish("t/after", b"ok"))
    assert paho_reads(link) == b""
    assert refused == [(b"t/big", "oversized")]
    assert got == [("t/after", b"ok")]


def test_an_oversized_publish_is_discarded_as_it_arrives_not_held(small_wire):
    link, theirs, got, refused = small_wire
    big = publish("t/big", b"x" * 50_000)  # six times the buffer bound
    sender = threading.Thread(target=theirs.sendall, args=(big + publish("t/after", b"ok"),))
    sender.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        paho_reads(link)
        assert link.pending() <= link.memory_bound
        time.sleep(0.001)
    sender.join(5)
    assert refused == [(b"t/big", "oversized")]
    assert got == [("t/after", b"ok")]


@pytest.mark.parametrize(
    "packet",
    [
        bytes([0x30, 5, 0, 200]) + b"abc",  # topic length 200 in a 5-byte packet
        bytes([0x30, 1, 0]),  # too short for a topic length at all
        bytes([0x30, 0]),  # empty
    ],
    ids=["topic-length-past-the-packet", "one-byte-body", "empty-body"],
)
def test_a_publish_that_cannot_hold_its_topic_is_refused_as_malformed(small_wire, packet):
    link, theirs, got, refused = small_wire
    feed(link, theirs, packet + publish("t/after", b"ok"))
    assert paho_reads(link) == b""
    assert refused == [(b"", "malformed-packet")]
    assert got == [("t/after", b"ok")]


def test_an_oversized_packet_for_paho_ends_the_link_with_an_error(small_wire):
    link, theirs, _, _ = small_wire
    feed(link, theirs, bytes([0x90]) + remaining_length(5000) + b"\0" * 100)
    with pytest.raises(ConnectionError, match="5000 bytes"):
        link.recv(1)


def test_framing_stops_after_a_batch_and_says_more_is_ready(wire):
    link, theirs, got = wire
    feed(link, theirs, b"".join(publish(f"t/{i}", b"p") for i in range(FRAME_BATCH + 10)))
    with pytest.raises(BlockingIOError):
        link.recv(1)
    assert len(got) == FRAME_BATCH
    assert link.readable()
    paho_reads(link)
    assert len(got) == FRAME_BATCH + 10


def test_reading_pauses_at_the_buffer_bound_and_resumes_without_losing_a_packet(small_wire):
    link, theirs, got, _ = small_wire
    packets = [publish(f"t/{i}", b"y" * 200) for i in range(400)]  # ~85 KB, 10 x the bound
    sender = threading.Thread(target=theirs.sendall, args=(b"".join(packets),))
    sender.start()
    # Nobody consumes: the I/O thread must stop at the bound (the rest waits in the kernel).
    time.sleep(0.3)
    assert 8192 <= link.pending() <= link.memory_bound
    held = link.pending()
    time.sleep(0.2)
    assert link.pending() == held
    deadline = time.monotonic() + 10
    while len(got) < len(packets) and time.monotonic() < deadline:
        paho_reads(link)
        assert link.pending() <= link.memory_bound
        time.sleep(0.001)
    sender.join(5)
    assert [t for t, _ in got] == [f"t/{i}" for i in range(400)]


def test_a_buffer_bound_that_cannot_hold_a_packet_twice_over_is_refused():
    ours, theirs = socket.socketpair()
    try:
        with pytest.raises(ValueError):
            BufferedLink(ours, on_publish=lambda t, p: None, max_packet=1024, max_buffer=2048)
    finally:
        ours.close()
        theirs.close()
