"""`clockfleet publish` against a real Mosquitto running broker/mosquitto.conf as shipped."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol import signing
from clockfleet.protocol.codec import decode
from clockfleet.protocol.messages import Profile, ServerList
from clockfleet.publisher.cli_common import EXIT_UNREACHABLE
from clockfleet.publisher.versions import date_floor
from tests.broker.mqttclient import connect
from tests.publisher.kit import FLEET, retained

US_EAST = "clock/v1/regions/us-east/servers"
EU_WEST = "clock/v1/regions/eu-west/servers"
ACME = "clock/v1/agents/acme-01/profile"
GLOBEX = "clock/v1/agents/globex-02/profile"

FLEET_WITHOUT_EU = """\
regions:
  us-east:
    timezone: America/New_York
    poll_interval_s: 3600
    resync_jitter_s: 30
    servers:
      - {host: ntp1.us-east.example.net}
      - {host: 192.0.2.10, port: 123}
agents:
  acme-01: {region: us-east, timezone: America/Chicago}
"""


def test_each_region_list_arrives_retained_and_signed(broker: ShippedBroker, fleet, publish, keys):
    fleet()
    private, public = keys
    assert publish("--signing-key", str(private)).rc == 0
    trust = signing.load_trust([public])
    # A plain subscriber that connects afterwards gets the retained lists.
    on_broker = retained(broker)
    assert set(on_broker) == {US_EAST, EU_WEST, ACME, GLOBEX}
    us = on_broker[US_EAST]
    assert signing.verify(us, trust) == "ops-2026"
    msg, _ = decode(ServerList, json.dumps(us).encode(), topic_id="us-east")
    assert msg.schema == "clock.servers/1"
    assert msg.timezone == "America/New_York"
    assert (msg.poll_interval_s, msg.resync_jitter_s) == (3600, 30)
    assert [(s.host, s.port) for s in msg.servers] == [
        ("ntp1.us-east.example.net", 123),
        ("192.0.2.10", 123),
    ]
    assert msg.version == date_floor() + 1
    assert signing.verify(on_broker[EU_WEST], trust) == "ops-2026"


def test_each_profile_arrives_signed_with_the_region_time_zone_as_default(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    private, public = keys
    assert publish("--signing-key", str(private)).rc == 0
    on_broker = retained(broker)
    trust = signing.load_trust([public])
    acme, _ = decode(Profile, json.dumps(on_broker[ACME]).encode(), topic_id="acme-01")
    globex, _ = decode(Profile, json.dumps(on_broker[GLOBEX]).encode(), topic_id="globex-02")
    assert (acme.region, acme.timezone) == ("us-east", "America/Chicago")
    assert (globex.region, globex.timezone) == ("eu-west", "Europe/Dublin")
    assert signing.verify(on_broker[ACME], trust) == "ops-2026"


def test_signing_key_in_the_fleet_file_is_relative_to_its_folder(broker, fleet, publish, keys):
    fleet("signing_key: keys/ops-2026.key\n" + FLEET)
    assert publish().rc == 0
    assert retained(broker)[US_EAST]["sig"]["key_id"] == "ops-2026"


def test_without_a_key_lists_go_out_unsigned_with_a_warning(broker, fleet, publish):
    fleet()
    run = publish()
    assert run.rc == 0
    assert "UNSIGNED" in run.err and "trust key will refuse" in run.err
    assert "sig" not in retained(broker)[US_EAST]


def test_an_unchanged_file_publishes_nothing(broker: ShippedBroker, fleet, publish, keys):
    fleet()
    assert publish("--signing-key", str(keys[0])).rc == 0
    before = retained(broker)
    watcher = connect(broker.daemon.port, "operator", broker.password("operator"))
    try:
        # Everything under the prefix: reading the broker's state must not write anything
        # either (no message to itself, so no grant beyond lists and profiles).
        watcher.subscribe("clock/v1/#")
        watcher.sync("clock/v1/agents/acme-01/cmd")
        retained_count = len(watcher.messages)
        run = publish("--signing-key", str(keys[0]))
        assert run.rc == 0
        assert "nothing changed" in run.out
        watcher.sync("clock/v1/agents/acme-02/cmd")
        live = [m.topic for m in watcher.messages[retained_count:] if not m.retain]
        assert live == ["clock/v1/agents/acme-02/cmd"]
    finally:
        watcher.close()
    assert retained(broker) == before


def test_a_changed_region_gets_version_plus_one_and_alone_is_republished(
    broker: ShippedBroker, fleet, publish, keys
):
    fleet()
    assert publish("--signing-key", str(keys[0])).rc == 0
    before = retained(broker)
    fleet(FLEET.replace("192.0.2.10, port: 123", "192.0.2.11, port: 123"))
    watcher = connect(broker.daemon.port, "operator", broker.password("operator"))
    try:
        watcher.subscribe("clock/v1/regions/+/servers", "clock/v1/agents/+/profile")
        run = publish("--signing-key", str(keys[0]))
        assert run.rc == 0
        assert f"region us-east: {before[US_EAST]['version']} -> " in run.out
        watcher.subscribe("clock/v1/agents/acme-01/cmd")
        watcher.sync("clock/v1/agents/acme-01/cmd")
        live = [m.topic for m in watcher.messages if not m.retain and "cmd" not in m.topic]
        assert live == [US_EAST]
    finally:
        watcher.close()
    after = retained(broker)
    assert after[US_EAST]["version"] == before[US_EAST]["version"] + 1
    assert after[US_EAST]["servers"][1]["host"] == "192.0.2.11"
    for topic in (EU_WEST, ACME, GLOBEX):
        assert after[topic] == before[topic]


def test_a_profile_change_republishes_only_that_profile(broker: ShippedBroker, fleet, publish):
    fleet()
    assert publish().rc == 0
    before = retained(broker)
    fleet(FLEET.replace("timezone: America/Chicago", "timezone: America/Denver"))
    run = publish()
    assert run.rc == 0
    assert "profile acme-01" in run.out and "(timezone)" in run.out
    after = retained(broker)
    assert after[ACME]["version"] == before[ACME]["version"] + 1
    assert after[US_EAST] == before[US_EAST]


def test_versions_never_go_backwards_after_the_broker_lost_its_state(
    broker: ShippedBroker, fleet, publish
):
    fleet()
    assert publish().rc == 0
    fleet(FLEET.replace("192.0.2.10", "192.0.2.11"))
    assert publish().rc == 0
    last = retained(broker)[US_EAST]["version"]
    # A crash before the autosave: the broker comes back without any retained message.
    broker.daemon.kill()
    for db in broker.daemon.log.parent.glob("mosquitto.db*"):
        db.unlink()
    broker.daemon = devstack.restart(broker.daemon)
    assert retained(broker) == {}
    run = publish()
    assert run.rc == 0
    assert retained(broker)[US_EAST]["version"] == last + 1


def test_with_no_record_anywhere_versions_start_above_todays_date_floor(
    broker: ShippedBroker, fleet, publish
):
    fleet()
    assert publish().rc == 0
    version = retained(broker)[US_EAST]["version"]
    yesterday = datetime.now(UTC) - timedelta(days=1)
    # Higher than anything issued on an earlier day, even 99 changes into that day.
    assert version == date_floor() + 1
    assert version > date_floor(yesterday) + 99


def test_state_file_records_the_issued_versions(broker: ShippedBroker, fleet, publish, tmp_path):
    fleet()
    assert publish().rc == 0
    state = json.loads((tmp_path / "state.json").read_text())
    assert (
        state["prefixes"]["clock/v1"]["region"]["us-east"] == retained(broker)[US_EAST]["version"]
    )


def test_an_invalid_retained_payload_is_replaced(broker: ShippedBroker, fleet, publish):
    fleet()
    pub = connect(broker.daemon.port, "publisher", broker.password("publisher"))
    try:
        pub.publish(US_EAST, b"{not json", retain=True)
    finally:
        pub.close()
    run = publish()
    assert run.rc == 0
    assert "invalid" in run.err
    assert retained(broker)[US_EAST]["region"] == "us-east"


def test_a_new_signing_key_republishes_everything(
    broker: ShippedBroker, fleet, publish, keys, tmp_path
):
    fleet()
    assert publish("--signing-key", str(keys[0])).rc == 0
    new_key, _ = signing.generate(tmp_path / "keys2", "ops-2027")
    run = publish("--signing-key", str(new_key))
    assert run.rc == 0
    assert "signature ops-2026 -> ops-2027" in run.out
    assert {v["sig"]["key_id"] for v in retained(broker).values()} == {"ops-2027"}


def test_dry_run_prints_the_change_and_publishes_nothing(broker: ShippedBroker, fleet, publish):
    fleet()
    assert publish().rc == 0
    before = retained(broker)
    fleet(FLEET.replace("Europe/Dublin", "Europe/London"))
    run = publish("--dry-run")
    assert run.rc == 0
    old = before[EU_WEST]["version"]
    assert f"would publish region eu-west: {old} -> {old + 1} (timezone)" in run.out
    assert f"would publish profile globex-02: {before[GLOBEX]['version']} -> " in run.out
    assert "nothing published" in run.out
    assert retained(broker) == before


def test_without_prune_a_removed_region_stays_and_is_named(broker: ShippedBroker, fleet, publish):
    fleet()
    assert publish().rc == 0
    fleet(FLEET_WITHOUT_EU)
    run = publish()
    assert run.rc == 0
    assert "region eu-west: on the broker" in run.out and "--prune" in run.out
    assert EU_WEST in retained(broker)


def test_prune_withdraws_a_removed_region_and_profile(broker: ShippedBroker, fleet, publish):
    fleet()
    assert publish().rc == 0
    fleet(FLEET_WITHOUT_EU)
    run = publish("--prune")
    assert run.rc == 0
    assert "withdrew region eu-west" in run.out
    assert "withdrew profile globex-02" in run.out
    assert set(retained(broker)) == {US_EAST, ACME}


def test_dry_run_with_prune_names_the_withdrawal_and_withdraws_nothing(
    broker: ShippedBroker, fleet, publish
):
    fleet()
    assert publish().rc == 0
    before = retained(broker)
    fleet(FLEET_WITHOUT_EU)
    run = publish("--dry-run", "--prune")
    assert run.rc == 0
    assert "would withdraw region eu-west (version " in run.out
    assert "would withdraw profile globex-02 (version " in run.out
    assert retained(broker) == before


def test_a_refused_publish_is_reported_and_exits_1(broker: ShippedBroker, fleet, publish):
    """An agent's identity may not write lists: under MQTT 5 the PUBACK says so."""
    fleet()
    run = publish(identity="acme-01")
    assert run.rc == 1
    assert "refused by the broker: Not authorized" in run.err
    assert retained(broker) == {}


def test_an_unreachable_broker_exits_5_with_one_line(fleet, tmp_path, capsys):
    from clockfleet.publisher.cli import publish_main

    path = fleet()
    port = devstack.free_port()
    rc = publish_main(
        [
            "--config",
            str(path),
            "--state-file",
            str(tmp_path / "s.json"),
            "--broker",
            f"mqtt://127.0.0.1:{port}",
        ]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_UNREACHABLE
    lines = err.splitlines()
    assert len(lines) == 1 and "cannot connect to the broker" in lines[0]


def test_a_wrong_password_exits_5_with_one_line(broker: ShippedBroker, fleet, tmp_path, capsys):
    from clockfleet.publisher.cli import publish_main

    path = fleet()
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-it\n")
    rc = publish_main(
        [
            "--config",
            str(path),
            "--broker",
            broker.url,
            "--username",
            "publisher",
            "--password-file",
            str(wrong),
        ]
    )
    err = capsys.readouterr().err
    assert rc == EXIT_UNREACHABLE
    lines = err.splitlines()
    assert len(lines) == 1 and "Not authorized" in lines[0]


def test_a_refused_login_is_not_tried_again_with_mqtt_311(
    broker: ShippedBroker, fleet, tmp_path, capsys
):
    """The CONNACK's reason code (bad credentials) is final: MQTT 3.1.1 would fail the same."""
    from clockfleet.publisher.cli import publish_main

    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-it\n")
    args = ["--config", str(fleet()), "--broker", broker.url, "--username", "publisher"]
    assert publish_main([*args, "--password-file", str(wrong)]) == EXIT_UNREACHABLE
    # Mosquitto logs in the order it handles clients: once this login is answered, the
    # publisher's attempts are all in the log.
    connect(broker.daemon.port, "operator", broker.password("operator")).close()
    assert broker.daemon.log.read_text().count("disconnected, not authorised") == 1


def test_the_installed_command_publishes_as_a_subprocess(
    broker: ShippedBroker, fleet, tmp_path, keys
):
    path = fleet()
    cmd = [
        str(Path(sys.executable).parent / "clockfleet"),
        "publish",
        "--config",
        str(path),
        "--signing-key",
        str(keys[0]),
        "--no-preflight",  # FLEET names documentation servers that answer nobody
        *broker.login("publisher"),
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "published region us-east" in first.stdout
    assert (tmp_path / ".publisher-state.json").exists()  # the default: next to the fleet file
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0
    assert "nothing changed" in second.stdout
