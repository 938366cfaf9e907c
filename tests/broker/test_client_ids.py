"""Client ids are bound to identities (broker/mosquitto.conf: use_username_as_clientid).

Mosquitto ends the older of two connections that share a client id and fires its will,
whatever their user names. An agent's will is its retained `offline` status, so without the
binding one agent's identity could knock any other agent offline just by naming its client
id. Run against the production config (TLS, identities, ACL) on a free loopback port.
"""

from __future__ import annotations

import time

import pytest

from clockfleet.devstack.mosquitto import ShippedBroker
from tests.broker.mqttclient import MqttProbe, connect

STATUS = "clock/v1/agents/{}/status"
REPORT = "clock/v1/agents/{}/report"


def login(b: ShippedBroker, identity: str, *, tls: bool = False, **kwargs) -> MqttProbe:
    if tls:
        kwargs.update(host="localhost", ca_file=str(b.certs / "ca.crt"))
    port = b.tls_port if tls else b.daemon.port
    return connect(port, identity, b.password(identity), **kwargs)


# The binding is a listener option, so both listeners are tried.
@pytest.mark.parametrize(
    ("listener", "stolen_id"),
    [("loopback", "clockfleet-agent-acme-02"), ("loopback", "acme-02"), ("tls", "acme-02")],
)
def test_an_agent_cannot_knock_another_offline_by_using_its_client_id(
    broker: ShippedBroker, listener: str, stolen_id: str
):
    b = broker
    tls = listener == "tls"
    watcher = login(b, "collector")
    victim = login(
        b, "acme-02", tls=tls, client_id=stolen_id, will=(STATUS.format("acme-02"), b"WILL")
    )
    try:
        watcher.subscribe(STATUS.format("acme-02"))
        attacker = login(b, "acme-01", tls=tls, client_id=stolen_id)
        try:
            # Anything the takeover caused reaches the watcher before this status does.
            assert victim.publish(STATUS.format("acme-02"), b"still-here").is_failure is False
            assert watcher.wait(lambda: watcher.on(STATUS.format("acme-02")))
            assert [m.payload for m in watcher.on(STATUS.format("acme-02"))] == [b"still-here"]
            assert victim.disconnects == [] and attacker.disconnects == []
        finally:
            attacker.close()
    finally:
        victim.close()
        watcher.close()


@pytest.mark.takeover("the takeover is what this test shows")
def test_a_second_login_as_the_same_identity_replaces_the_first(broker: ShippedBroker):
    """The binding's price, documented in docs/trust.md: one connection per identity, so
    every program instance that runs at the same time needs an identity of its own."""
    b = broker
    first = login(b, "acme-01", client_id="service")
    try:
        second = login(b, "acme-01", client_id="once")
        try:
            assert first.wait(lambda: first.disconnects != [])
            assert second.disconnects == []
        finally:
            second.close()
    finally:
        first.close()


def test_the_publisher_and_an_operator_reading_state_do_not_disturb_the_collector(
    broker: ShippedBroker,
):
    """The roles run side by side: each has its own identity, so its own client id."""
    b = broker
    collector = login(b, "collector")
    try:
        collector.subscribe(REPORT.format("acme-01"))
        for role in ("publisher", "operator"):
            other = login(b, role)
            other.close()
        agent = login(b, "acme-01")
        try:
            agent.publish(REPORT.format("acme-01"), b"{}")
        finally:
            agent.close()
        assert collector.wait(lambda: collector.on(REPORT.format("acme-01")))
        time.sleep(0.2)  # a takeover's disconnect would be processed by now
        assert collector.disconnects == []
    finally:
        collector.close()


def test_the_production_config_listens_only_where_it_says(broker: ShippedBroker):
    """A listener option placed before the first `listener` line makes Mosquitto open a
    default listener on port 1883 on every address: the config must never do that."""
    b = broker
    opened = [line for line in b.daemon.log.read_text().splitlines() if "listen socket" in line]
    ports = {int(line.rsplit(" ", 1)[1].rstrip(".")) for line in opened}
    assert ports == {b.daemon.port, b.tls_port}, opened
