"""Ingest reference (worker): one bare paho subscriber doing json.loads on every message.

The least a Python reader of the report stream can do (docs/decisions.md: 17k/s at QoS 1, 28k/s at
QoS 0 from a backlog). Same protocol as bench.collector_worker: `ready`, `count` {n} ->
`counted`, `seen` -> how many messages so far; with --expect N, `known` once N messages
have arrived, timed from before the client was created.
"""

from __future__ import annotations

import argparse
import json
import select
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.stack import emit


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--topic", default="clock/v1/agents/+/report")
    p.add_argument("--qos", type=int, default=0)
    p.add_argument("--expect", type=int, default=None)
    args = p.parse_args()
    t_start = time.monotonic()
    state = {"count": 0, "target": None, "first": 0.0, "last": 0.0, "seen": 0, "subscribed": False}

    def on_message(client, userdata, msg) -> None:
        now = time.monotonic()
        json.loads(msg.payload)
        state["seen"] += 1
        if args.expect is not None and state["seen"] == args.expect:
            emit("known", agents=args.expect, t_start=t_start, t_all=now)
        if state["target"] is not None:
            if state["count"] == 0:
                state["first"] = now
            state["count"] += 1
            state["last"] = now
            if state["count"] == state["target"]:
                emit("counted", count=state["count"], first=state["first"], last=state["last"])
                state["target"] = None

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ref-drain")
    c.on_connect = lambda cl, *_: cl.subscribe(args.topic, args.qos)
    c.on_subscribe = lambda *_: state.update(subscribed=True)
    c.on_message = on_message
    c.connect(args.host, args.port)
    while not state["subscribed"]:
        c.loop(0.1)
    emit("ready")
    next_check = 0.0
    while True:
        c.loop(0.05)
        now = time.monotonic()
        if now < next_check:
            continue
        next_check = now + 0.1  # a stdin poll per message would slow the reference down
        if select.select([sys.stdin], [], [], 0)[0]:
            cmd = json.loads(sys.stdin.readline() or '{"cmd": "stop"}')
            if cmd.get("cmd") == "stop":
                break
            if cmd.get("cmd") == "seen":
                emit("seen", n=state["seen"])
            if cmd.get("cmd") == "count":
                state["count"], state["target"] = 0, cmd["n"]
                emit("ok", cmd="count")
    c.disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
