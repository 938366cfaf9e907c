"""The link hands QoS 0 PUBLISHes to the collector itself and every other packet to paho,
in stream order (the UNSUBACK fence depends on it)."""

from __future__ import annotations

import socket
import time

import pytest

from clockfleet.collector.link import BufferedLink


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


def test_a_malformed_remaining_length_is_left_to_paho(wire):
    link, theirs, got = wire
    bad = bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    feed(link, theirs, bad)
    assert paho_reads(link) == bad
    assert got == []
