"""A test NTP server of our own, for answers no real server gives on purpose.

Real chronyd covers the good cases; this fake covers kiss-o'-death, broken and forged
packets and silence. It binds a free UDP port on a loopback address and answers from a
thread according to one behaviour:

    ok             a valid stratum-2 answer (its clock off by offset_s, default 0)
    offset         the same, named for falseticker tests: FakeNtpServer("offset", offset_s=30)
    kod            kiss-o'-death: leap 3, stratum 0, ref_id = kiss ("RATE", "DENY", "RSTR", ...)
    leap3          leap 3 with stratum 2 (unsynchronised)
    stratum0       stratum 0, leap 0, a ref_id that is not an ASCII kiss code
    stratum16      stratum 16
    wrong-origin   origin timestamp is not the request's transmit timestamp
    truncated      only the first 40 bytes of a valid answer
    zero-transmit  transmit timestamp 0
    zero-receive   receive timestamp 0
    mode3          mode 3 instead of 4
    version0       version 0
    slow-server    T3 - T2 = 5 s (> chrony's 4 s server interval)
    far            root dispersion 5 s (root distance above 3 s)
    silent         reads every request and never answers
    spoof          a valid answer (right origin) sent from the same address but ANOTHER port,
                   and from another loopback address on the same port; then nothing

Usage:

    with FakeNtpServer("kod", kiss="DENY", host="127.0.0.5") as fake:
        probe([(fake.host, fake.port), ...])
        assert fake.requests == 1      # datagrams received so far

good_first=N answers the first N requests validly, then behaves (e.g. a RATE kiss or
silence in the middle of a burst, as ntpd's `limited` does).
delays_s=(d1, d2, ...) holds request n back d_n seconds before answering (a longer round trip).
forge_origin=True gives any behaviour a wrong origin (e.g. a forged kiss-o'-death).
Attributes may be changed while it runs (fake.behaviour = "ok": the server got fixed).
`wait_for_requests(n, timeout)` waits until n requests have arrived. Stopping (leaving the
context, or stop()) closes the sockets and joins the thread.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence

from clockfleet.ntp.packet import NtpPacket, decode, unix_ns_to_ntp
from tests.helpers import next_loopback_address

BEHAVIOURS = (
    "ok",
    "offset",
    "kod",
    "leap3",
    "stratum0",
    "stratum16",
    "wrong-origin",
    "truncated",
    "zero-transmit",
    "zero-receive",
    "mode3",
    "version0",
    "slow-server",
    "far",
    "silent",
    "spoof",
)

SPOOF_ADDRESS = "127.0.0.254"


class FakeNtpServer:
    def __init__(
        self,
        behaviour: str = "ok",
        *,
        host: str | None = None,
        kiss: str = "RATE",
        offset_s: float = 0.0,
        stratum: int = 2,
        forge_origin: bool = False,
        good_first: int = 0,
        delays_s: Sequence[float] = (),
    ) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}; one of {', '.join(BEHAVIOURS)}")
        self.behaviour = behaviour
        self.kiss = kiss
        self.offset_ns = round(offset_s * 1e9)
        self.stratum = stratum
        self.forge_origin = forge_origin
        self.good_first = good_first
        self.delays_s = tuple(delays_s)
        # Each fake on an address of its own: an agent counts a server once per address
        # (choice.py), as two answers from one host are not two servers.
        host = host or next_loopback_address()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.05)  # how quickly stop() is noticed
        self.host: str = host
        self.port: int = self._sock.getsockname()[1]
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"fakentp-{behaviour}", daemon=True
        )

    def __enter__(self) -> FakeNtpServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._sock.close()

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.requests < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.requests >= n

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, client = self._sock.recvfrom(1024)
            except socket.timeout:  # TimeoutError from Python 3.10 on
                continue
            except OSError:
                return
            self.requests += 1
            if self.requests <= len(self.delays_s):  # as if the request took longer to come
                time.sleep(self.delays_s[self.requests - 1])
            received_ns = time.time_ns()
            behaviour = "ok" if self.requests <= self.good_first else self.behaviour
            if behaviour == "silent":
                continue
            try:
                request = decode(data)
            except ValueError:
                continue
            reply = self._reply(behaviour, request, received_ns)
            try:
                if behaviour == "spoof":
                    self._send_spoofed(reply, client)
                else:
                    self._sock.sendto(reply, client)
            except OSError:
                continue

    def _reply(self, b: str, request: NtpPacket, received_ns: int) -> bytes:
        t2 = received_ns + self.offset_ns
        t3 = time.time_ns() + self.offset_ns
        if b == "slow-server":
            t2, t3 = t2 - 2_500_000_000, t3 + 2_500_000_000
        packet = NtpPacket(
            leap=3 if b in ("kod", "leap3") else 0,
            version=0 if b == "version0" else 4,
            mode=3 if b == "mode3" else 4,
            stratum={"kod": 0, "stratum0": 0, "stratum16": 16}.get(b, self.stratum),
            poll=request.poll,
            precision=-20,
            root_delay_s=0.0,
            root_dispersion_s=5.0 if b == "far" else 0.001,
            ref_id=(
                self.kiss.encode("ascii").ljust(4, b"\0")[:4]
                if b == "kod"
                else b"\x01\x02\x03\x04"
                if b == "stratum0"
                else b"\x7f\x00\x00\x01"
            ),
            reference_ts=unix_ns_to_ntp(t2 - 1_000_000_000),
            origin_ts=(
                request.transmit_ts ^ 0xFFFF
                if b == "wrong-origin" or self.forge_origin
                else request.transmit_ts
            ),
            receive_ts=0 if b == "zero-receive" else unix_ns_to_ntp(t2),
            transmit_ts=0 if b == "zero-transmit" else unix_ns_to_ntp(t3),
        )
        data = packet.encode()
        return data[:40] if b == "truncated" else data

    def _send_spoofed(self, reply: bytes, client: tuple) -> None:
        # The forger knows the nonce (an on-path view) but cannot send from the server's own
        # address and port: the client must accept answers only from exactly those.
        with socket.socket(self._sock.family, socket.SOCK_DGRAM) as other_port:
            other_port.bind((self.host, 0))
            other_port.sendto(reply, client)
        if self._sock.family == socket.AF_INET:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_host:
                    other_host.bind((SPOOF_ADDRESS, self.port))
                    other_host.sendto(reply, client)
            except OSError:
                pass  # that port is taken there: the other-port forgery still tests the check
