"""A counting UDP relay in front of one NTP server: when did each query hit the server?

chronyd's own `serverstats` counts packets but not when they came, so the jitter figure
puts this relay between the agents and chronyd: it notes the CLOCK_MONOTONIC time of every
request, forwards it, and routes the answer back by the request's transmit nonce (which the
server echoes as origin). A probe opens one socket per server and sends its whole sample
burst from it, so the first packet from a source port (not heard for QUERY_GAP_S) is one
NTP query of one agent.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

# A sample burst is back to back; the kernel may hand a later agent the same source port,
# so a port silent this long starts a new query.
QUERY_GAP_S = 0.5


class CountingRelay:
    def __init__(self, listen_host: str, upstream: tuple[str, int]) -> None:
        self.down = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.down.bind((listen_host, 0))
        self.down.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.up.connect(upstream)
        self.address: tuple[str, int] = self.down.getsockname()[:2]
        self.packets: list[float] = []  # receive time of every request
        self.queries: list[float] = []  # first request of each client socket
        self._last_from: dict[tuple[str, int], float] = {}
        self._pending: dict[bytes, tuple[str, int]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="udp-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.down, selectors.EVENT_READ, "down")
        sel.register(self.up, selectors.EVENT_READ, "up")
        while not self._stop:
            for key, _ in sel.select(0.2):
                with contextlib.suppress(OSError):
                    if key.data == "down":
                        data, addr = self.down.recvfrom(2048)
                        now = time.monotonic()
                        self.packets.append(now)
                        last = self._last_from.get(addr)
                        if last is None or now - last > QUERY_GAP_S:
                            self.queries.append(now)
                        self._last_from[addr] = now
                        if len(data) >= 48:
                            self._pending[data[40:48]] = addr
                            self.up.send(data)
                    else:
                        data = self.up.recv(2048)
                        addr = self._pending.pop(data[24:32], None)
                        if addr is not None:
                            self.down.sendto(data, addr)
        sel.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.down.close()
        self.up.close()


def per_second(times: list[float], start: float) -> list[int]:
    """How many of `times` fell into each whole second after `start`."""
    if not times:
        return []
    buckets = [0] * (int(max(times) - start) + 1)
    for t in times:
        if t >= start:
            buckets[int(t - start)] += 1
    return buckets
