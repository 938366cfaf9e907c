"""Convergence reference (worker): N bare paho subscribers of one region list, one selector.

They do the least a client can do with a new list: receive it and json.loads it. What they
measure is the floor the broker and paho set for fanning one retained update out to N
clients in one process (docs/decisions.md: p100 0.04 s at 1000, 0.12 s at 3000).

Protocol (JSON lines, bench.stack.Worker): emits `ready` once every client has its SUBACK and
the retained list version `--initial`, then one `round` per new version every client has
received, with every client's receive time (CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.selectorloop import SelectorLoop
from bench.stack import emit, raise_nofile


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--initial", type=int, required=True)
    p.add_argument("--qos", type=int, default=1)
    args = p.parse_args()
    raise_nofile()
    loop = SelectorLoop()
    n = args.n
    have = [-1] * n  # the newest version each client holds
    at: dict[int, list[float | None]] = {}
    stop = False

    def on_connect(client, index, flags, rc, props) -> None:
        client.subscribe(args.topic, qos=args.qos)

    def on_message(client, index, msg) -> None:
        now = time.monotonic()
        if not msg.payload:
            return
        version = json.loads(msg.payload)["version"]
        have[index] = version
        at.setdefault(version, [None] * n)[index] = now

    def on_stdin() -> None:
        nonlocal stop
        line = sys.stdin.readline()
        if not line or json.loads(line).get("cmd") == "stop":
            stop = True

    t0 = time.monotonic()
    for i in range(n):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ref-{i}", userdata=i)
        c.on_connect = on_connect
        c.on_message = on_message
        loop.add(c)
        c.connect(args.host, args.port, keepalive=60)
        loop.pump(0)  # read CONNACKs as they come: the broker's buffers stay small
    loop.watch(sys.stdin, on_stdin)
    while min(have) < args.initial and not stop:
        loop.pump(0.05)
    emit("ready", seconds=time.monotonic() - t0, clients=n)
    reported = {args.initial}
    while not stop:
        loop.pump(0.05)
        for version, times in list(at.items()):
            if version not in reported and all(t is not None for t in times):
                reported.add(version)
                emit("round", version=version, times=times)
    for c in loop.clients:
        c.disconnect()
        c.loop_write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
