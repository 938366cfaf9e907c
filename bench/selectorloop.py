"""Many paho clients on one selector: paho's external-loop API, as the floors were measured.

Those floors: docs/decisions.md, "Measured floors on this machine".

`loop_start()` per client costs a thread and a select() each and breaks past ~339 clients
in one process (FD_SETSIZE); one epoll over every client's socket does not.
"""

from __future__ import annotations

import contextlib
import selectors
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt


class SelectorLoop:
    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.clients: list[mqtt.Client] = []
        self._last_misc = time.monotonic()
        self._extra: dict[int, Callable[[], None]] = {}

    def add(self, client: mqtt.Client) -> None:
        client.on_socket_open = self._open
        client.on_socket_close = self._close
        client.on_socket_register_write = self._want_write
        client.on_socket_unregister_write = self._done_writing
        self.clients.append(client)

    def watch(self, fileobj, on_readable: Callable[[], None]) -> None:
        """Another readable file (the worker's stdin) served by the same loop."""
        self.sel.register(fileobj, selectors.EVENT_READ, on_readable)

    def unwatch(self, fileobj) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fileobj)

    def _open(self, client, userdata, sock) -> None:
        self.sel.register(sock, selectors.EVENT_READ, client)

    def _close(self, client, userdata, sock) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _want_write(self, client, userdata, sock) -> None:
        self.sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _done_writing(self, client, userdata, sock) -> None:
        self.sel.modify(sock, selectors.EVENT_READ, client)

    def pump(self, timeout: float) -> None:
        for key, events in self.sel.select(timeout):
            target = key.data
            if isinstance(target, mqtt.Client):
                if events & selectors.EVENT_READ:
                    target.loop_read()
                if events & selectors.EVENT_WRITE:
                    target.loop_write()
            else:
                target()
        now = time.monotonic()
        if now - self._last_misc >= 1.0:  # keepalive pings, retries: once a second is plenty
            self._last_misc = now
            for c in self.clients:
                c.loop_misc()
