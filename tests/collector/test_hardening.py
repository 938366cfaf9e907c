"""No message stops the collector, and no flood starves it: against a real Mosquitto."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest

from clockfleet.collector.ingest import Collector
from clockfleet.collector.ratelimit import RateLimit
from clockfleet.devstack.mosquitto import ShippedBroker
from tests.collector.kit import (
    RunningCollector,
    report,
    report_topic,
    status,
    status_topic,
    wait_until,
)
from tests.collector.test_socket_reader import publish as publish_packet

NESTED = b"[" * 5000 + b"]" * 5000  # 10 KB, far under the 64 KiB limit
GOOD = ("good-1", "good-2", "good-3")


def refused_or_failed(c: RunningCollector) -> float:
    """Rejections (any reason) plus handler errors: where a nested payload is counted, by
    the codec's rejection, or by the handler's catch if the codec raised anything else."""
    total = 0.0
    for (name, _), value in c.samples().items():
        if name in (
            "clockfleet_collector_messages_rejected_total",
            "clockfleet_collector_handler_errors_total",
        ):
            total += value
    return total


def test_a_retained_nested_report_beside_good_ones_is_counted_also_after_a_restart(
    broker, publisher, start_collector
):
    publisher.publish(report_topic("nested"), NESTED)
    for agent in GOOD:
        publisher.publish(report_topic(agent), report(agent))
    for _ in range(2):  # the first collector, then one restarted in front of the same state
        c = start_collector()
        wait_until(lambda c=c: c.collector.retained_loaded.is_set(), what="retained snapshot")
        wait_until(lambda c=c: refused_or_failed(c) == 1, what="the nested report counted")
        samples = c.samples()
        shown = {
            dict(labels)["agent"]
            for name, labels in samples
            if name == "clockfleet_agent_last_report_ok"
        }
        assert shown == set(GOOD)
        assert samples[("clockfleet_collector_broker_connected", frozenset())] == 1
        c.stop()


def test_an_exception_in_the_decoder_is_counted_logged_with_the_topic_and_the_loop_goes_on(
    running_collector, publisher, monkeypatch, caplog
):
    # The codec as the issue found it: deep nesting raised RecursionError, not Rejected.
    from clockfleet.collector import fleet_state

    real = fleet_state.decode

    def decode(cls, payload, **kw):
        if payload.startswith(b"[["):
            raise RecursionError("maximum recursion depth exceeded")
        return real(cls, payload, **kw)

    monkeypatch.setattr(fleet_state, "decode", decode)
    caplog.set_level(logging.WARNING, logger="clockfleet.collector")
    c = running_collector
    publisher.publish(report_topic("nested"), NESTED)
    publisher.publish(report_topic("good-1"), report("good-1"))
    wait_until(lambda: "good-1" in c.state.agents, what="the good report after the bad one")
    assert c.value("clockfleet_collector_handler_errors_total") == 1
    assert c.collector.connected
    logged = [r.getMessage() for r in caplog.records if "RecursionError" in r.getMessage()]
    assert len(logged) == 1 and report_topic("nested") in logged[0]


def test_an_exception_in_the_report_hook_is_counted_and_later_reports_are_still_applied(
    broker, publisher
):
    def hook(agent: str, rep, t: float) -> None:
        if agent == "boom":
            raise RuntimeError("hook failed")

    collector = Collector(broker.settings("collector"), on_report=hook)
    collector.start()
    try:
        publisher.publish(report_topic("boom"), report("boom"))
        publisher.publish(report_topic("after"), report("after"))
        wait_until(lambda: "after" in collector.state.agents, what="the next report")
        assert collector.state.handler_errors == 1
        assert collector.connected
    finally:
        collector.stop()


class RawFlood:
    """A bare MQTT 3.1.1 client writing pre-encoded QoS 0 PUBLISHes as fast as the socket
    takes them: a flooding agent (paho's own publish path would be the bottleneck)."""

    def __init__(self, broker: ShippedBroker, topic: str, payload: bytes) -> None:
        self.sock = socket.create_connection((broker.host, broker.port))
        var = b"\x00\x04MQTT\x04\xc2\x00\x3c"  # user name, password, clean session
        for field in (b"flooder", b"flooder", broker.password("flooder").encode()):
            var += len(field).to_bytes(2, "big") + field
        self.sock.sendall(bytes([0x10, len(var)]) + var)
        assert self.sock.recv(4)[:2] == b"\x20\x02"  # CONNACK
        self.batch = publish_packet(topic, payload, retain=False) * 200
        self.sent = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sock.sendall(self.batch)
            self.sent += 200

    def start(self) -> RawFlood:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(10)
        self.sock.close()


def test_a_flood_from_one_agent_is_rate_limited_and_keepalives_still_flow(broker, publisher):
    # A short keepalive: the broker drops a client that sends nothing for 1.5 x 2 s.
    collector = Collector(
        broker.settings("collector"),
        keepalive_s=2,
        max_buffer=4 * 1024 * 1024,
    )
    collector.start()
    flood = RawFlood(
        broker,
        report_topic("flooder"),
        json.dumps(report("flooder")).encode(),
    )
    try:
        wait_until(lambda: collector.connected, what="subscribed")
        flood.start()
        end = time.monotonic() + 8  # several keepalive periods
        sent, seen = 0, set()
        while time.monotonic() < end:
            sent += 1
            publisher.publish(report_topic("quiet"), report("quiet", offset_s=sent / 1000))
            time.sleep(0.5)
            entry = collector.state.agents.get("quiet")
            if entry is not None:
                seen.add(entry.report.offset_s)
        flood.stop()
        # The broker may drop a QoS 0 message to a busy subscriber, but the quiet agent's
        # reports kept arriving all along, and the link still works after the flood.
        assert len(seen) >= sent // 2
        publisher.publish(report_topic("quiet"), report("quiet", offset_s=-1.0))
        wait_until(
            lambda: collector.state.agents["quiet"].report.offset_s == -1.0,
            what="a report after the flood",
        )
        assert collector.link().reconnects == 0
        assert collector.connected
        assert collector.state.dropped["rate-limited"] > 1000
    finally:
        flood.stop()
        collector.stop()


def test_a_retained_snapshot_is_never_rate_limited(broker, publisher):
    n = 300
    publisher.publish_many((report_topic(f"a{i}"), report(f"a{i}")) for i in range(n))
    publisher.publish_many((status_topic(f"a{i}"), status(f"a{i}")) for i in range(n))
    # The tightest limit there is: one message per topic, then one every 1000 s.
    collector = Collector(broker.settings("collector"), rate_limit=RateLimit(1, 0.001))
    collector.start()
    try:
        wait_until(collector.retained_loaded.is_set, what="the retained snapshot")
        assert len(collector.state.agents) == n
        assert all(
            e.report is not None and e.status is not None for e in collector.state.agents.values()
        )
        assert collector.state.dropped["rate-limited"] == 0
        # ...while live messages on one topic are over that limit: the newest waits, held,
        # and what it replaces is dropped
        publisher.publish(report_topic("a0"), report("a0", offset_s=0.5))
        publisher.publish(report_topic("a0"), report("a0", offset_s=0.6))
        wait_until(lambda: collector.state.dropped["rate-limited"] == 1, what="the drop")
    finally:
        collector.stop()


def test_the_rate_limit_keeps_a_burst_and_drops_the_excess_of_one_topic(broker, publisher):
    collector = Collector(broker.settings("collector"), rate_limit=RateLimit(3, 0.001))
    collector.start()
    try:
        wait_until(lambda: collector.connected, what="subscribed")
        publisher.publish_many(
            (report_topic("chatty"), report("chatty", offset_s=k * 0.1)) for k in range(1, 8)
        )
        publisher.publish(report_topic("other"), report("other"))
        wait_until(lambda: "other" in collector.state.agents, what="another agent's report")
        # 3 applied, the newest (0.7) held until a token comes back, 4..6 dropped
        assert collector.state.dropped["rate-limited"] == 3
        assert collector.state.agents["chatty"].report.offset_s == pytest.approx(0.3)
    finally:
        collector.stop()


def test_the_newest_message_over_the_limit_is_applied_once_the_topic_has_a_token(broker, publisher):
    collector = Collector(broker.settings("collector"), rate_limit=RateLimit(3, 5.0))
    collector.start()
    try:
        wait_until(lambda: collector.connected, what="subscribed")
        publisher.publish_many(
            (report_topic("chatty"), report("chatty", offset_s=k * 0.1)) for k in range(1, 8)
        )
        wait_until(
            lambda: (
                "chatty" in collector.state.agents
                and collector.state.agents["chatty"].report.offset_s == pytest.approx(0.7)
            ),
            what="the newest report applied",
        )
        assert collector.state.dropped["rate-limited"] <= 3
    finally:
        collector.stop()


def test_the_collector_cli_refuses_a_rate_limit_of_zero_burst(broker):
    from tests.collector.test_collector_cli import run_cli

    r = run_cli("collector", *broker.login("collector"), "--rate-limit-burst", "0")
    assert r.returncode == 2
    assert "--rate-limit-burst" in r.stderr
