"""The benchmark's publisher: signed, versioned, retained lists and profiles, with PUBACK times.

It builds exactly what `clockfleet publish` puts on the wire (the protocol's message types,
Ed25519 over the canonical encoding) but records the CLOCK_MONOTONIC time of each PUBACK,
which is where every convergence measurement starts. CLOCK_MONOTONIC is one clock for all
processes of this machine, so the workers' times compare with it directly.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from clockfleet.protocol import codec, signing, topics
from clockfleet.protocol.messages import Profile, Server, ServerList

PREFIX = topics.DEFAULT_PREFIX


class ListPublisher:
    def __init__(self, host: str, port: int, keydir: Path, key_id: str = "bench") -> None:
        self.key_path, self.pub_path = signing.generate(keydir, key_id)
        self.key = signing.load_signing_key(self.key_path)
        self._acked: dict[int, float] = {}
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
        self.client.on_publish = self._on_publish
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        now = time.monotonic()
        with self._cond:
            self._acked[mid] = now
            self._cond.notify_all()

    def publish_signed(self, topic: str, obj: dict[str, Any], timeout: float = 10.0) -> float:
        """Publish retained at QoS 1; return the monotonic time of its PUBACK."""
        payload = json.dumps(signing.sign(obj, self.key), separators=(",", ":")).encode()
        info = self.client.publish(topic, payload, qos=1, retain=True)
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self._acked, timeout):
                raise TimeoutError(f"no PUBACK for {topic} within {timeout} s")
            return self._acked.pop(info.mid)

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

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
