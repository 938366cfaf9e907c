"""The publisher's one MQTT session (`broker_io.PublisherSession`) on the shipped broker: the
state it is in from connect to close (`clockfleet.protocol.session.LinkState`), the snapshot
fence, and a publish the ACL refuses."""

from __future__ import annotations

from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol.session import LinkState
from clockfleet.publisher import broker_io


def test_a_session_is_online_until_it_is_closed(broker: ShippedBroker):
    session = broker_io.open_session(broker.settings("publisher"), 5.0)
    try:
        assert session.state == LinkState.ONLINE
        assert session.version_name == "MQTT 5"
    finally:
        broker_io.close(session)
    assert session.state == LinkState.CLOSED
    broker_io.close(session)  # closing twice is harmless
    assert session.state == LinkState.CLOSED


def test_the_fence_ends_a_snapshot_that_holds_every_retained_list(broker: ShippedBroker):
    session = broker_io.open_session(broker.settings("publisher"), 5.0)
    try:
        topics = [f"clock/v1/regions/r{n}/servers" for n in range(3)]
        results = broker_io.publish_retained(session, [(t, b"x") for t in topics], 5.0)
        assert all(r.ok for r in results), results
        assert sorted(broker_io.read_retained(session, "clock/v1", 5.0)) == topics
    finally:
        broker_io.close(session)


def test_a_publish_the_acl_refuses_is_a_result_that_says_so(broker: ShippedBroker):
    session = broker_io.open_session(broker.settings("operator"), 5.0)
    try:
        [result] = broker_io.publish_retained(session, [("clock/v1/regions/r1/servers", b"x")], 5.0)
        assert not result.ok and "refused by the broker" in result.reason
    finally:
        broker_io.close(session)
