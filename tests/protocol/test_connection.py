"""Connecting: rotation through a cluster's nodes, and clear failures."""

from __future__ import annotations

import argparse

import pytest

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol import connection as conn
from clockfleet.protocol import session


def settings_for(
    spec: str, timeout_s: float = 2.0, broker: ShippedBroker | None = None
) -> conn.ConnectionSettings:
    """Settings for the broker list `spec`, logged in as operator on `broker` if given."""
    s = broker.settings("operator") if broker else conn.ConnectionSettings(brokers=[])
    s.brokers = conn.parse_brokers(spec)
    s.connect_timeout_s = timeout_s
    return s


def test_connects_to_a_live_broker(broker: ShippedBroker):
    settings = settings_for(broker.url, broker=broker)
    client = conn.new_client(settings)
    try:
        addr = conn.connect_blocking(client, settings)
        assert str(addr) == broker.url
        assert client.is_connected()
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_dead_node_is_skipped_for_a_live_one(broker: ShippedBroker):
    dead = f"mqtt://127.0.0.1:{devstack.free_port()}"
    settings = settings_for(f"{dead},{broker.url}", broker=broker)
    for _ in range(3):  # the order is random: whichever comes first, the live one wins
        client = conn.new_client(settings)
        try:
            assert str(conn.connect_blocking(client, settings)) == broker.url
        finally:
            client.disconnect()
            client.loop_stop()


def test_no_live_broker_raises_naming_each_one():
    dead = f"mqtt://127.0.0.1:{devstack.free_port()}"
    settings = settings_for(dead)
    with pytest.raises(conn.BrokerUnreachable, match=r"127\.0\.0\.1"):
        conn.connect_blocking(conn.new_client(settings), settings)


def test_password_file_is_read_and_missing_one_is_a_usage_error(tmp_path):
    parser = argparse.ArgumentParser()
    conn.add_arguments(parser)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    args = parser.parse_args(["--username", "a1", "--password-file", str(pw)])
    settings = conn.settings_from_args(args)
    assert (settings.username, settings.password) == ("a1", "s3cret")
    args = parser.parse_args(["--password-file", str(tmp_path / "nope")])
    with pytest.raises(conn.UsageError):
        conn.settings_from_args(args)


def test_backoff_is_jittered_and_capped():
    delays = [session.backoff_delay(10, 1.0, 8.0) for _ in range(200)]
    assert max(delays) <= 8.0
    assert len({round(d, 3) for d in delays}) > 100  # not lock-step
