"""The benchmark's publisher: signed, versioned, retained lists and profiles, with send times.

It builds exactly what `clockfleet publish` puts on the wire (the protocol's message types,
Ed25519 over the canonical encoding) and records, for each PUBLISH, the CLOCK_MONOTONIC
instant it was handed to the socket. That instant is where every latency of the bench
starts (START_RULE): nothing downstream can have the message before it. CLOCK_MONOTONIC is
one clock for all processes of this machine, so the workers' times compare with it directly.

Why not the PUBACK (what the figures used to start from): Mosquitto handles a QoS 1 PUBLISH
by queueing, and writing at once, the message to every matching subscriber, and only then
sends the PUBACK (src/handle_publish.c: sub__messages_queue() before send__puback()). With
thousands of subscribers the PUBACK comes tens to hundreds of milliseconds after many of
them have the message, so "receive time minus PUBACK" came out negative for them (BENCHMARKS.md
printed a bare-subscriber p50 of -9.74 ms at N=3000 and -0.132 s at N=10,000). The PUBACK is
still recorded (`Sent.puback`), as a measure of the broker's fan-out, never as a start.

How the instant is taken: paho runs without its own network thread. A small I/O thread of
ours reads the socket (PUBACKs, PINGRESPs) and keeps the connection alive, and it and
publish_signed() take one lock around every paho call. With no paho thread and no external
loop callbacks, paho's publish() writes the packet to the socket within the call, so the
time read just before publish() and the time read after it bracket the hand-over (a few
microseconds apart; `Sent.written`). paho's loop_start() would instead queue the packet for
its thread, which wakes and writes it some time later.
"""

from __future__ import annotations

import json
import selectors
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from clockfleet.protocol import codec, signing, topics
from clockfleet.protocol.messages import Profile, Server, ServerList

PREFIX = topics.DEFAULT_PREFIX

# The one rule every figure that times a published list states in its method text.
START_RULE = (
    "every latency starts at the instant the bench publisher hands the list's PUBLISH to its "
    "socket (CLOCK_MONOTONIC read just before paho's publish(), which writes the packet within "
    "the call: bench/listpub.py), the first instant of the causal chain, so no latency can be "
    "negative; not the PUBACK, which Mosquitto sends only after it has written the message to "
    "every subscriber (many subscribers have it before the publisher has its PUBACK)"
)


@dataclass(frozen=True)
class Sent:
    """One published message's times (CLOCK_MONOTONIC)."""

    topic: str
    sent: float  # just before the PUBLISH was handed to the socket: where latencies start
    written: float  # publish() returned; the socket had taken the packet by then if `whole`
    whole: bool  # the whole packet was taken within the call (else the I/O thread finished it)
    puback: float  # the broker's PUBACK arrived (after its fan-out to the subscribers)


class _Client(mqtt.Client):
    """paho's client, driven by the ListPublisher's I/O thread, every call under one lock.

    loop_start() / loop_stop() start and stop that thread instead of paho's own, so code that
    moves the publisher to another broker (disconnect, loop_stop, connect, loop_start) keeps
    working and keeps the send instant exact.
    """

    def __init__(self, owner: ListPublisher, client_id: str) -> None:
        super().__init__(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._owner = owner

    def loop_start(self) -> MQTTErrorCode:
        self._owner._start_io()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_stop(self) -> MQTTErrorCode:
        self._owner._stop_io()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def connect(self, *args: Any, **kwargs: Any) -> MQTTErrorCode:
        with self._owner._io:
            return super().connect(*args, **kwargs)

    def disconnect(self, *args: Any, **kwargs: Any) -> MQTTErrorCode:
        with self._owner._io:
            return super().disconnect(*args, **kwargs)


class ListPublisher:
    def __init__(self, host: str, port: int, keydir: Path, key_id: str = "bench") -> None:
        self.key_path, self.pub_path = signing.generate(keydir, key_id)
        self.key = signing.load_signing_key(self.key_path)
        self._acked: dict[int, float] = {}
        self._cond = threading.Condition()
        self._io = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.history: list[Sent] = []
        self.client = _Client(self, "bench-publisher")
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self._connected = threading.Event()
        self.client.connect(host, port)
        self._start_io()
        if not self._connected.wait(10):
            raise TimeoutError(f"no CONNACK from {host}:{port} within 10 s")

    # --- the I/O thread --------------------------------------------------------------------

    def _start_io(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="bench-publisher-io", daemon=True)
        self._thread.start()

    def _stop_io(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)
        self._thread = None

    def _serve(self) -> None:
        """Read PUBACKs and keep the connection alive; publishing happens in the caller."""
        sel = selectors.DefaultSelector()
        registered = None
        try:
            while not self._stop.is_set():
                sock = self.client.socket()
                if sock is None:
                    return  # disconnected: a publish now fails with its error code
                if sock is not registered:
                    if registered is not None:
                        sel.unregister(registered)
                    sel.register(sock, selectors.EVENT_READ)
                    registered = sock
                readable = sel.select(0.05)
                with self._io:  # publish_signed() waits at most one pass for the lock
                    if readable:
                        self.client.loop_read()
                    if self.client.want_write():
                        self.client.loop_write()
                    self.client.loop_misc()
                time.sleep(0)  # let a waiting publish_signed() take the lock
        finally:
            sel.close()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        now = time.monotonic()
        with self._cond:
            self._acked[mid] = now
            self._cond.notify_all()

    # --- publishing ------------------------------------------------------------------------

    def publish_signed(self, topic: str, obj: dict[str, Any], timeout: float = 10.0) -> float:
        """Publish retained at QoS 1, wait for its PUBACK; return the instant it was handed
        to the socket (START_RULE). All its times are in `self.last`."""
        payload = json.dumps(signing.sign(obj, self.key), separators=(",", ":")).encode()
        with self._io:
            t_sent = time.monotonic()
            info = self.client.publish(topic, payload, qos=1, retain=True)
            t_written = time.monotonic()
            whole = not self.client.want_write()
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self._acked, timeout):
                raise TimeoutError(f"no PUBACK for {topic} within {timeout} s")
            t_ack = self._acked.pop(info.mid)
        self.history.append(Sent(topic, t_sent, t_written, whole, t_ack))
        return t_sent

    @property
    def last(self) -> Sent:
        return self.history[-1]

    def publish_list(
        self,
        region: str,
        version: int,
        servers: list[tuple[str, int]],
        *,
        poll_interval_s: int = 3600,
        resync_jitter_s: int = 0,
        timezone: str | None = "UTC",
    ) -> float:
        """Publish list `version`; return the instant it was handed to the socket."""
        msg = ServerList(
            schema="clock.servers/1",
            region=region,
            version=version,
            issued_at=datetime.now(UTC),
            servers=[Server(h, p) for h, p in servers],
            timezone=timezone,
            poll_interval_s=poll_interval_s,
            resync_jitter_s=resync_jitter_s,
        )
        return self.publish_signed(topics.servers_topic(PREFIX, region), codec.to_object(msg))

    def publish_profile(self, agent: str, region: str, version: int = 1) -> float:
        msg = Profile(
            schema="clock.profile/1",
            agent=agent,
            region=region,
            timezone="UTC",
            version=version,
            issued_at=datetime.now(UTC),
        )
        return self.publish_signed(topics.profile_topic(PREFIX, agent), codec.to_object(msg))

    def move_to(self, host: str, port: int) -> None:
        """Reconnect to another broker (a cluster node), keeping the same rule."""
        self._stop_io()
        self._connected.clear()
        self.client.disconnect()
        self.client.connect(host, port)
        self._start_io()
        if not self._connected.wait(10):
            raise TimeoutError(f"no CONNACK from {host}:{port} within 10 s")

    def close(self) -> None:
        self._stop_io()
        self.client.disconnect()
