"""Test kit for NTS: a UDP relay that tampers with replies, and a fake NTS-KE server.

Real chronyd (devstack/nts_server.py) serves every good case. These stand in only for what
no real server does on purpose:

    FlipRelay     forwards NTP between a client and a server, flipping one byte of every
                  reply (a man in the middle rewriting answers); `flip=None` forwards as is
    FakeKeServer  TLS 1.3 with ALPN ntske/1 and a certificate of the test CA, answering
                  every NTS-KE request with the records it is given (no cookies, an error
                  record, a wrong AEAD...). Python's ssl module serves it: a server needs no
                  key export to send records.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
from pathlib import Path
from typing import Optional

from clockfleet.ntp import nts_ke


class FlipRelay:
    def __init__(
        self,
        upstream: tuple[str, int],
        flip: Optional[int],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.upstream = upstream
        self.flip = flip  # index of the reply byte to flip (negative: from the end)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.out.connect(upstream)
        self.replies = 0
        self._stop_r, self._stop_w = socket.socketpair()
        self._client: Optional[tuple[str, int]] = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self.sock, self.out, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            if self.sock in ready:
                data, self._client = self.sock.recvfrom(2048)
                self.out.send(data)
            if self.out in ready:
                data = bytearray(self.out.recv(2048))
                if self.flip is not None:
                    data[self.flip] ^= 0x01
                self.replies += 1
                if self._client is not None:
                    self.sock.sendto(bytes(data), self._client)

    def close(self) -> None:
        self._stop_w.send(b"x")
        self._thread.join(5)
        for s in (self.sock, self.out, self._stop_r, self._stop_w):
            s.close()

    def __enter__(self) -> FlipRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeKeServer:
    def __init__(self, cert: Path, key: Path, answer: bytes, host: str = "127.0.0.1"):
        self.answer = answer
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.ctx.set_alpn_protocols([nts_ke.ALPN.decode()])
        self.ctx.load_cert_chain(cert, key)
        self.listener = socket.create_server((host, 0))
        self.host, self.port = self.listener.getsockname()[:2]
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    request = b""
                    while nts_ke.message_complete(request) is False:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    self.requests.append(request)
                    tls.sendall(self.answer)
            except (OSError, ssl.SSLError):
                continue  # a client that refused our certificate

    def close(self) -> None:
        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(5)

    def __enter__(self) -> FakeKeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def answer(*records: bytes) -> bytes:
    """An NTS-KE answer of these records and End of Message."""
    return b"".join(records) + nts_ke.record(nts_ke.END_OF_MESSAGE)


NTPV4 = nts_ke.record(nts_ke.NEXT_PROTOCOL, b"\0\0")
SIV = nts_ke.record(nts_ke.AEAD_ALGORITHM, b"\0\x0f")


def server_reply(
    header: bytes,
    uid: bytes,
    s2c: bytes,
    cookies: tuple[bytes, ...] = (b"n" * 100,),
    *,
    before_auth: bytes = b"",
    after_auth: bytes = b"",
) -> bytes:
    """What an NTS server answers (RFC 8915 §5.7): our Unique Identifier, then the
    authenticator sealing new cookies with the server-to-client key."""
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

    from clockfleet.ntp import nts_packet as p

    associated = header + p.field(p.UNIQUE_IDENTIFIER, uid) + before_auth
    plaintext = b"".join(p.field(p.COOKIE, c) for c in cookies)
    nonce = bytes(range(16))
    sealed = AESSIV(s2c).encrypt(plaintext, [associated, nonce])
    body = len(nonce).to_bytes(2, "big") + len(sealed).to_bytes(2, "big") + nonce + sealed
    return associated + p.field(p.AUTHENTICATOR, body) + after_auth


def ipv4(host: str = "127.0.0.1") -> list[tuple[int, tuple[str, int]]]:
    """The addresses a probe would hand NTS-KE for `host` (the port is the list's NTP port)."""
    return [(socket.AF_INET, (host, 123))]
