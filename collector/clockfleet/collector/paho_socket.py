"""Every place the collector reaches past paho's public API, and nothing else.

The collector's fast path (link.py) puts a socket stand-in, `BufferedLink`, under a paho
client: its own thread drains the broker's socket into memory so that Mosquitto never
drops a retained burst for a slow reader, and it frames QoS 0 PUBLISHes itself (~2 us a
message against paho's ~35 us). paho has no public way to do either, so this module does it
by relying on these paho 2.x internals; tests/collector/test_paho_contract.py checks each of
them against the installed paho and a real Mosquitto, and pyproject.toml pins paho to the
versions that test has passed on (2.1, 2.2):

1. `Client._sock` holds the connected socket after `connect()` (the object `socket()`
   returns), and paho reads it again on every call: replacing it moves all later I/O of
   `loop_read()`, `loop_write()`, `loop_misc()` and `disconnect()` to the replacement.
2. Once connected, paho calls only `recv(n)`, `send(data)` and `close()` on that object
   (and `pending()`, only in its own `loop()`/`loop_start()`, which the collector never
   runs). It treats BlockingIOError from either as "not now", `recv() == b""` and any other
   OSError as a lost connection (loop_read() returns an error code; nothing is raised).
   Hence the stand-in needs no `setblocking`, `select` or TLS method of its own.
3. `MQTTMessage._topic` holds the topic's raw bytes (`.topic` decodes them and raises on
   bytes that are not UTF-8): the per-topic rate limit is keyed by bytes, before decoding,
   also for the messages that still go through paho (anything but a QoS 0 PUBLISH).

Everything else the collector uses is paho's documented API: the external-loop calls
(`socket()`, `loop_read()`, `loop_write()`, `want_write()`, `loop_misc()`), callback API
version 2 and its ReasonCode objects, `user_data_get()`/`user_data_set()`, `protocol`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import paho.mqtt.client as mqtt

if TYPE_CHECKING:  # paho defines its socket type for type checkers only
    from paho.mqtt.client import SocketLike

    Link = TypeVar("Link", bound=SocketLike)
else:
    Link = TypeVar("Link")


def install_link(client: mqtt.Client, wrap: Callable[[socket.socket], Link]) -> Link:
    """Put `wrap(the connected socket)` under `client`: paho does all its I/O through it from
    now on (point 1 above). Call between `connect()` and the first `loop_read()`."""
    sock = client._sock
    if sock is None:
        raise ConnectionError("the client has no socket: call connect() first")
    if not isinstance(sock, socket.socket):  # TCP or TLS (an SSLSocket is one), never a proxy's
        raise ConnectionError(f"the client's socket is a {type(sock).__name__}: not supported")
    link = wrap(sock)
    client._sock = link
    return link


def raw_topic(msg: mqtt.MQTTMessage) -> bytes:
    """The topic of a message as the broker sent it, never decoded (point 3 above)."""
    return msg._topic
