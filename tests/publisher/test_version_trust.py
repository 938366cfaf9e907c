"""Versions count only from broker copies that verify with a key the publisher holds.

Anyone who can write one retained message (a leaked broker password, a broker operator, a
buggy client) must not be able to push a region's version to the end of the version space:
agents would then refuse every later list as a replay. Each test writes such a copy to a
real Mosquitto (broker/mosquitto.conf as shipped: identities, ACL) and runs
`clockfleet publish` against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol import signing
from clockfleet.protocol.messages import MAX_VERSION
from clockfleet.publisher.cli_common import EXIT_VERSION_JUMP
from clockfleet.publisher.versions import MAX_VERSION_JUMP, date_floor
from tests.broker.mqttclient import connect
from tests.publisher.kit import FLEET, retained

US_EAST = "clock/v1/regions/us-east/servers"
END_OF_SPACE = 9_007_199_254_740_990  # 2^53 - 2: one more publish and nothing is newer
US_EAST_BODY = {
    "schema": "clock.servers/1",
    "region": "us-east",
    "issued_at": "2026-01-01T00:00:00Z",
    "servers": [{"host": "203.0.113.66", "port": 123}],
}


def put_retained(b: ShippedBroker, topic: str, obj: dict) -> None:
    """Write one retained message, as anyone able to write that topic could."""
    c = connect(b.daemon.port, "publisher", b.password("publisher"))
    try:
        assert c.publish(topic, json.dumps(obj).encode(), retain=True).is_failure is False
    finally:
        c.close()


def test_an_unsigned_copy_at_the_end_of_the_version_space_is_not_adopted(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    assert publish("--signing-key", str(keys[0])).rc == 0
    issued = retained(broker)[US_EAST]["version"]
    put_retained(broker, US_EAST, {**US_EAST_BODY, "version": END_OF_SPACE})
    run = publish("--signing-key", str(keys[0]))
    assert run.rc == 0
    assert (
        f"region us-east on the broker: version {END_OF_SPACE} is not counted (unsigned;" in run.err
    )
    now = retained(broker)[US_EAST]
    assert now["version"] == issued + 1
    assert signing.verify(now, signing.load_trust([keys[1]])) == "ops-2026"


def test_dry_run_shows_an_unverified_copy_as_not_counted(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    put_retained(broker, US_EAST, {**US_EAST_BODY, "version": END_OF_SPACE})
    run = publish("--signing-key", str(keys[0]), "--dry-run")
    assert run.rc == 0
    assert (
        f"would publish region us-east: {END_OF_SPACE} (not counted: unsigned) -> "
        f"{date_floor() + 1}" in run.out
    )
    assert retained(broker)[US_EAST]["version"] == END_OF_SPACE


def test_a_copy_signed_by_another_key_with_our_key_id_is_not_counted(
    broker: ShippedBroker, fleet, publish, keys, tmp_path: Path
):
    fleet()
    impostor, _ = signing.generate(tmp_path / "impostor", "ops-2026")
    forged = signing.sign(
        {**US_EAST_BODY, "version": END_OF_SPACE}, signing.load_signing_key(impostor)
    )
    put_retained(broker, US_EAST, forged)
    run = publish("--signing-key", str(keys[0]))
    assert run.rc == 0
    assert "is not counted (signature by 'ops-2026' does not verify" in run.err
    assert retained(broker)[US_EAST]["version"] == date_floor() + 1


def test_an_unsigned_list_leaves_no_agent_locked_out(
    broker: ShippedBroker, fleet, publish, keys, chrony_server, short_tmp: Path
):
    """An agent that trusts the key syncs on a list, is offered the unsigned one at the end
    of the version space, and still applies the next list the publisher issues."""
    ntp = chrony_server()
    text = FLEET.replace(
        "{host: ntp1.us-east.example.net}", f"{{host: {ntp.host}, port: {ntp.port}}}"
    )
    fleet(text)
    state_dir = short_tmp / "agent-state"

    def agent_once() -> dict:
        done = subprocess.run(
            [
                sys.executable, "-m", "clockfleet", "agent", "--id", "acme-01", "--once",
                "--backend", "observe", "--no-timezone", "--timeout", "10",
                "--state-dir", str(state_dir), "--trust-key", str(keys[1]),
                *broker.login("acme-01"),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert publish("--signing-key", str(keys[0])).rc == 0
    first = retained(broker)[US_EAST]["version"]
    assert agent_once()["list_version"] == first
    put_retained(broker, US_EAST, {**US_EAST_BODY, "version": END_OF_SPACE})
    assert agent_once()["list_version"] == first  # refused: unsigned
    fleet(text.replace("192.0.2.10", "192.0.2.11"))
    assert publish("--signing-key", str(keys[0])).rc == 0
    assert agent_once()["list_version"] == first + 1


def test_a_verified_higher_version_on_the_broker_is_the_base_of_the_next(
    broker: ShippedBroker, fleet, publish, keys
):
    """Another publisher holding the same key went further: continue from there."""
    fleet()
    ahead = date_floor() + 50
    key = signing.load_signing_key(keys[0])
    put_retained(broker, US_EAST, signing.sign({**US_EAST_BODY, "version": ahead}, key))
    run = publish("--signing-key", str(keys[0]))
    assert run.rc == 0
    assert f"region us-east: {ahead} -> {ahead + 1} (" in run.out
    assert retained(broker)[US_EAST]["version"] == ahead + 1


def test_a_verified_version_far_ahead_is_refused_with_its_exit_code(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    far = date_floor() + MAX_VERSION_JUMP + 1
    key = signing.load_signing_key(keys[0])
    put_retained(broker, US_EAST, signing.sign({**US_EAST_BODY, "version": far}, key))
    run = publish("--signing-key", str(keys[0]))
    assert run.rc == EXIT_VERSION_JUMP
    assert f"region us-east: the broker holds version {far}, signed by ops-2026" in run.err
    assert "--accept-version-jump" in run.err and "nothing published" in run.err
    assert set(retained(broker)) == {US_EAST}  # nothing else went out either


def test_accept_version_jump_adopts_a_verified_version_far_ahead(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    far = date_floor() + MAX_VERSION_JUMP + 1
    key = signing.load_signing_key(keys[0])
    put_retained(broker, US_EAST, signing.sign({**US_EAST_BODY, "version": far}, key))
    assert publish("--signing-key", str(keys[0]), "--accept-version-jump").rc == 0
    assert retained(broker)[US_EAST]["version"] == far + 1


def test_a_verified_copy_at_the_end_of_the_space_is_refused_even_when_accepted(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    key = signing.load_signing_key(keys[0])
    put_retained(broker, US_EAST, signing.sign({**US_EAST_BODY, "version": MAX_VERSION}, key))
    run = publish("--signing-key", str(keys[0]), "--accept-version-jump")
    assert run.rc == 2
    assert f"version would exceed {MAX_VERSION}" in run.err


def test_a_retired_key_given_with_trust_key_still_counts(
    broker: ShippedBroker, fleet, publish, keys, tmp_path: Path
):
    """After a rotation and a lost state file, the old key's versions bound the new ones."""
    fleet()
    assert publish("--signing-key", str(keys[0])).rc == 0
    ahead = date_floor() + 40
    put_retained(
        broker,
        US_EAST,
        signing.sign({**US_EAST_BODY, "version": ahead}, signing.load_signing_key(keys[0])),
    )
    (tmp_path / "state.json").unlink()
    new_key, _ = signing.generate(tmp_path / "keys2", "ops-2027")
    run = publish("--signing-key", str(new_key), "--trust-key", str(keys[1]))
    assert run.rc == 0
    assert "not counted" not in run.err
    assert retained(broker)[US_EAST]["version"] == ahead + 1


def test_a_retired_key_not_given_is_named_in_the_warning(
    broker: ShippedBroker, fleet, publish, keys, tmp_path: Path
):
    fleet()
    assert publish("--signing-key", str(keys[0])).rc == 0
    new_key, _ = signing.generate(tmp_path / "keys2", "ops-2027")
    run = publish("--signing-key", str(new_key))
    assert run.rc == 0
    assert "is not counted (signed with unknown key id 'ops-2026'" in run.err


def test_an_undecodable_copy_we_signed_still_bounds_the_next_version(
    broker: ShippedBroker, fleet, publish, keys
):
    """A list an older publisher signed before hosts were checked strictly: agents refuse it
    today, but some may have applied it, so its version still counts."""
    fleet()
    ahead = date_floor() + 30
    old = {**US_EAST_BODY, "servers": [{"host": "fe80::1%eth0", "port": 123}], "version": ahead}
    put_retained(broker, US_EAST, signing.sign(old, signing.load_signing_key(keys[0])))
    run = publish("--signing-key", str(keys[0]))
    assert run.rc == 0
    assert "region us-east on the broker is invalid" in run.err
    assert retained(broker)[US_EAST]["version"] == ahead + 1


def test_an_undecodable_unsigned_copy_does_not_bound_the_next_version(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    bad = {**US_EAST_BODY, "servers": [{"host": "fe80::1%eth0", "port": 123}]}
    put_retained(broker, US_EAST, {**bad, "version": END_OF_SPACE})
    run = publish("--signing-key", str(keys[0]))
    assert run.rc == 0
    assert retained(broker)[US_EAST]["version"] == date_floor() + 1


def test_without_any_key_the_broker_version_is_not_counted(broker: ShippedBroker, fleet, publish):
    """Nothing verifies without a key: versions come from the state file and the date."""
    fleet()
    put_retained(broker, US_EAST, {**US_EAST_BODY, "version": END_OF_SPACE})
    assert publish().rc == 0
    assert retained(broker)[US_EAST]["version"] == date_floor() + 1


def test_another_regions_signed_list_replayed_on_this_topic_does_not_count(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    key = signing.load_signing_key(keys[0])
    other = {**US_EAST_BODY, "region": "ap-south", "version": date_floor() + 70}
    put_retained(broker, US_EAST, signing.sign(other, key))
    run = publish("--signing-key", str(keys[0]))
    assert run.rc == 0
    assert retained(broker)[US_EAST]["version"] == date_floor() + 1
