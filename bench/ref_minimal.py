"""Convergence floor (worker): N minimal clients doing the agent's work and nothing else.

Each client, on a new list: parses it, checks its Ed25519 signature (PyNaCl, as the agent),
makes the same four-sample NTP exchange with the list's first server (one non-blocking UDP
socket on the same selector, so that many clients' exchanges overlap as our agents' do; a
random nonce per request, the lowest-delay sample kept), and publishes a retained QoS 1
report the collector accepts. All N on one selector in one process, no threads, no
validation beyond the signature, no state directory, no status file: what is left is the
real floor for our agents' work on this machine.

Parsing and the signature check: `shared` (the default) does them once per distinct payload
for all clients of the process, as our agents do (agent.fleet.VerifiedCache: N hosts would
check in parallel, so one check serialised N times on one core would overstate the cost,
and a floor must not do work that ours skips); `each` makes every client parse and check
its own copy (as the floor did before: it then did N checks where our agents did one).

Protocol (JSON lines, bench.stack.Worker): emits `ready` once every client holds the retained
list version `--initial` and has reported it; then, on `verify` {mode}, switches mode and
answers `ok`; on `made` {version} emits when each client received that list (`got`) and
published its report (`times`); `rss` as the fleet worker; stays until `stop` (the collector
worker times the reports).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from nacl.signing import VerifyKey
from paho.mqtt.enums import CallbackAPIVersion

from bench.selectorloop import SelectorLoop
from bench.stack import emit, raise_nofile
from clockfleet.protocol.codec import canonical_bytes
from clockfleet.protocol.signing import load_public_key

SAMPLES = 4
TIMEOUT_S = 0.3
NTP_EPOCH = 2_208_988_800


class Burst:
    """Four SNTP exchanges with one server, none blocking: each answer, read when the loop
    finds the socket readable, sends the next request; `done(best)` gets (offset, delay) of
    the lowest-delay sample, or None if the server stayed silent past the timeout."""

    def __init__(self, loop: SelectorLoop, host: str, port: int, done) -> None:
        self.loop, self.done = loop, done
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.connect((host, port))
        self.deadline = time.monotonic() + TIMEOUT_S
        self.best: tuple[float, float] | None = None
        self.sent = 0
        self.finished = False
        loop.watch(self.sock, self.on_readable)
        self.send()

    def send(self) -> None:
        self.nonce = int.from_bytes(os.urandom(8), "big") or 1
        self.t1 = time.time()
        self.sent += 1
        self.sock.send(b"\x23" + b"\0" * 39 + struct.pack("!Q", self.nonce))

    def on_readable(self) -> None:
        if self.finished:
            return None  # an event of the same select() batch, after a newer list ended it
        try:
            data = self.sock.recv(512)
        except OSError:
            return self.finish()
        t4 = time.time()
        if len(data) < 48 or struct.unpack_from("!Q", data, 24)[0] != self.nonce:
            return None
        rec, xmt = struct.unpack_from("!QQ", data, 32)
        t2 = (rec >> 32) - NTP_EPOCH + (rec & 0xFFFFFFFF) / 2**32
        t3 = (xmt >> 32) - NTP_EPOCH + (xmt & 0xFFFFFFFF) / 2**32
        delay, offset = (t4 - self.t1) - (t3 - t2), ((t2 - self.t1) + (t3 - t4)) / 2
        if self.best is None or delay < self.best[1]:
            self.best = (offset, max(delay, 0.0))
        if self.sent < SAMPLES:
            return self.send()
        return self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.loop.unwatch(self.sock)
        self.sock.close()
        self.done(self.best)


def report(agent: str, region: str, version: int, server: dict, sample) -> bytes:
    at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body: dict = {
        "schema": "clock.report/1",
        "agent": agent,
        "region": region,
        "list_version": version,
        "discipline": "observe" if sample else "none",
        "at": at,
        "ok": sample is not None,
        "tried": [{**server, "outcome": "ok" if sample else "timeout"}],
    }
    if sample is not None:
        body.update(server=server, offset_s=sample[0], delay_s=sample[1], stratum=8, leap=0)
    return json.dumps(body).encode()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--region", required=True)
    p.add_argument("--trust", required=True, help="the publisher's public key file")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--initial", type=int, required=True)
    p.add_argument("--verify", choices=("shared", "each"), default="shared")
    args = p.parse_args()
    raise_nofile()
    key_id, key = load_public_key(Path(args.trust))
    verify_key: VerifyKey = key
    topic = f"clock/v1/regions/{args.region}/servers"
    loop = SelectorLoop()
    have = [-1] * args.n
    bursts: dict[int, Burst] = {}
    stop = False
    mode = args.verify
    checked: dict[bytes, dict] = {}  # payload -> its parsed, verified list (mode shared)
    got: dict[int, list[float]] = {}  # list version -> when each client received it
    made: dict[int, list[float]] = {}  # list version -> when each client published its report

    def parse_and_verify(payload: bytes) -> dict | None:
        if mode == "shared" and (obj := checked.get(payload)) is not None:
            return obj
        obj = json.loads(payload)
        sig = obj.get("sig") or {}
        if sig.get("key_id") != key_id:
            return None
        verify_key.verify(canonical_bytes(obj), base64.b64decode(sig["value"]))
        if mode == "shared":
            if len(checked) > 16:
                checked.clear()
            checked[payload] = obj
        return obj

    def on_connect(client, index, flags, rc, props) -> None:
        client.subscribe(topic, qos=1)

    def on_message(client, index, msg) -> None:
        if not msg.payload:
            return
        t_got = time.monotonic()
        obj = parse_and_verify(msg.payload)
        if obj is None:
            return
        version = obj["version"]
        if version <= have[index]:
            return
        have[index] = version
        got.setdefault(version, []).append(t_got)
        server = obj["servers"][0]

        def measured(sample) -> None:
            if bursts.get(index) is burst:
                del bursts[index]
            payload = report(f"floor-{index}", args.region, version, server, sample)
            client.publish(f"clock/v1/agents/floor-{index}/report", payload, qos=1, retain=True)
            made.setdefault(version, []).append(time.monotonic())

        if index in bursts:
            bursts[index].finish()  # a newer list while the last burst is out
        burst = bursts[index] = Burst(loop, server["host"], server["port"], measured)

    def on_stdin() -> None:
        nonlocal stop, mode
        line = sys.stdin.readline()
        cmd = json.loads(line) if line else {"cmd": "stop"}
        if cmd.get("cmd") == "stop":
            stop = True
        elif cmd.get("cmd") == "made":
            v = cmd["version"]
            emit("made", times=made.get(v, []), got=got.get(v, []))
        elif cmd.get("cmd") == "rss":
            me = psutil.Process()
            emit("rss", rss=me.memory_info().rss, cpu=sum(me.cpu_times()[:2]))
        elif cmd.get("cmd") == "verify":
            mode = cmd["mode"]
            checked.clear()
            emit("ok", mode=mode)

    t0 = time.monotonic()
    for i in range(args.n):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"floor-{i}", userdata=i)
        c.on_connect = on_connect
        c.on_message = on_message
        loop.add(c)
        c.connect(args.host, args.port, keepalive=60)
        loop.pump(0)
    loop.watch(sys.stdin, on_stdin)
    while (min(have) < args.initial or bursts) and not stop:
        loop.pump(0.05)  # every client holds the list and has made its report of it
        now = time.monotonic()
        for burst in [b for b in bursts.values() if now > b.deadline]:
            burst.finish()
    emit("ready", seconds=time.monotonic() - t0, clients=args.n)
    while not stop:
        loop.pump(0.05)
        now = time.monotonic()
        for burst in [b for b in bursts.values() if now > b.deadline]:
            burst.finish()  # silent past the timeout: report with what it has
    for c in loop.clients:
        c.disconnect()
        c.loop_write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
