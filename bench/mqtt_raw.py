"""A raw MQTT 3.1.1 publisher: pre-encoded PUBLISH packets written as fast as a socket takes them.

A paho publisher manages only 11–13k messages/s here (docs/decisions.md): a live ingest
test driven by it measures the publisher. This one encodes every packet beforehand and
streams them, so the broker and the consumer are what is measured. PUBACKs are drained by a
reader thread.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return struct.pack("!H", len(s)) + s


def connect_packet(client_id: str, keepalive: int = 60) -> bytes:
    body = _string(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", keepalive)
    body += _string(client_id.encode())
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, *, qos: int, retain: bool, pid: int) -> bytes:
    header = 0x30 | (qos << 1) | (1 if retain else 0)
    body = _string(topic.encode())
    if qos:
        body += struct.pack("!H", pid)
    body += payload
    return bytes([header]) + _varint(len(body)) + body


def report_payload(agent: str, at: datetime | None = None) -> bytes:
    """A realistic, valid clock.report/1 (about 400 bytes) for `agent`."""
    from clockfleet.protocol import codec
    from clockfleet.protocol.messages import Report, Server, Tried

    report = Report(
        schema="clock.report/1",
        agent=agent,
        region="bench",
        list_version=7,
        ok=True,
        discipline="observe",
        at=at or datetime.now(UTC),
        tried=[
            Tried(host="ntp1.bench.example.net", port=123, outcome="timeout", detail="no answer"),
            Tried(host="192.0.2.10", port=123, outcome="ok", offset_s=0.0012, delay_s=0.0004),
        ],
        server=Server(host="192.0.2.10", port=123),
        offset_s=0.0012,
        delay_s=0.0004,
        stratum=2,
        leap=0,
        root_distance_s=0.0021,
        timezone="Europe/Dublin",
        software="0.1.0",
    )
    return codec.encode(report)


def report_stream(agents: Iterable[str], qos: int = 1) -> tuple[bytes, int]:
    """PUBLISH packets of one retained report per agent: (the bytes, how many)."""
    at = datetime.now(UTC)
    chunks = []
    for i, agent in enumerate(agents):
        chunks.append(
            publish_packet(
                f"clock/v1/agents/{agent}/report",
                report_payload(agent, at),
                qos=qos,
                retain=True,
                pid=i % 65535 + 1,
            )
        )
    return b"".join(chunks), len(chunks)


class RawPublisher:
    def __init__(self, host: str, port: int, client_id: str = "bench-raw") -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id))
        connack = self._read_exactly(4)
        if connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"CONNACK refused: {connack.hex()}")

    def _read_exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return buf

    def publish_stream(
        self, stream: bytes, count: int, timeout: float = 120.0
    ) -> tuple[float, float]:
        """Send QoS 1 packets; return (time of the first byte sent, time of the last PUBACK)."""
        acked = threading.Event()
        t_last = [0.0]

        def drain() -> None:
            need = count * 4  # PUBACK: 0x40 0x02 + packet id
            got = 0
            while got < need:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return
                got += len(chunk)
            t_last[0] = time.monotonic()
            acked.set()

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        t_first = time.monotonic()
        view = memoryview(stream)
        for i in range(0, len(view), 1 << 20):
            self.sock.sendall(view[i : i + (1 << 20)])
        if not acked.wait(timeout):
            raise TimeoutError(f"not every PUBACK within {timeout} s")
        return t_first, t_last[0]

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            self.sock.close()
