"""`clockfleet publish`'s preflight against real chronyd servers, a fake NTP server that
counts requests and a silent UDP socket, all on loopback, with a real Mosquitto."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.publisher.cli_common import EXIT_PREFLIGHT
from tests.agent.fakentp import FakeNtpServer
from tests.publisher.kit import retained

US_EAST = "clock/v1/regions/us-east/servers"


def fleet_text(*servers: tuple[str, int]) -> str:
    listed = ", ".join(f"{{host: '{h}', port: {p}}}" for h, p in servers)
    return f"""\
regions:
  us-east:
    timezone: America/New_York
    servers: [{listed}]
agents:
  acme-01: {{region: us-east}}
"""


@pytest.fixture
def silent() -> Iterator[tuple[str, int]]:
    s: socket.socket = devstack.silent_udp()
    yield s.getsockname()[:2]
    s.close()


@pytest.fixture
def counting() -> Iterator[FakeNtpServer]:
    with FakeNtpServer() as fake:
        yield fake


def test_a_healthy_new_server_passes_and_the_list_is_published(
    broker: ShippedBroker, fleet, publish, chrony_server
):
    ntp = chrony_server()
    fleet(fleet_text((ntp.host, ntp.port)))
    run = publish(preflight=True)
    assert run.rc == 0, run.err
    assert f"preflight  us-east  {ntp.host}:{ntp.port}  ok  offset " in run.out
    assert "stratum 8" in run.out
    assert retained(broker)[US_EAST]["servers"] == [{"host": ntp.host, "port": ntp.port}]


def test_a_silent_new_server_blocks_the_publish_with_its_exit_code(
    broker: ShippedBroker, fleet, publish, chrony_server, silent
):
    ntp = chrony_server()
    fleet(fleet_text((ntp.host, ntp.port), silent))
    run = publish(preflight=True)
    assert run.rc == EXIT_PREFLIGHT
    assert f"preflight  us-east  {silent[0]}:{silent[1]}  timeout  no answer" in run.out
    assert "1 of 2 new or moved servers failed" in run.err
    assert "nothing published" in run.err
    assert retained(broker) == {}


def test_a_blocked_publish_says_some_servers_answer_only_from_the_pbx_networks(
    broker: ShippedBroker, fleet, publish, silent
):
    fleet(fleet_text(silent))
    run = publish(preflight=True)
    assert run.rc == EXIT_PREFLIGHT
    assert "only from the PBXs' networks" in run.err and "--force" in run.err


def test_force_publishes_past_a_failing_server_and_says_so(
    broker: ShippedBroker, fleet, publish, silent
):
    fleet(fleet_text(silent))
    run = publish("--force", preflight=True)
    assert run.rc == 0, run.err
    assert "publishing anyway (--force)" in run.out
    assert retained(broker)[US_EAST]["servers"] == [{"host": silent[0], "port": silent[1]}]


def test_an_unchanged_list_queries_nothing(broker: ShippedBroker, fleet, publish, counting):
    fleet(fleet_text(counting.address))
    assert publish(preflight=True).rc == 0
    asked = counting.requests
    assert asked > 0
    again = publish(preflight=True)
    assert again.rc == 0
    assert "nothing changed" in again.out
    assert "preflight" not in again.out
    assert counting.requests == asked


def test_a_server_kept_in_place_is_not_queried_again(
    broker: ShippedBroker, fleet, publish, counting, chrony_server
):
    fleet(fleet_text(counting.address))
    assert publish(preflight=True).rc == 0
    asked = counting.requests
    added = chrony_server()
    fleet(fleet_text(counting.address, (added.host, added.port)))
    run = publish(preflight=True)
    assert run.rc == 0, run.err
    assert f"{added.host}:{added.port}  ok" in run.out
    assert counting.requests == asked


def test_a_server_moved_to_another_position_is_queried(
    broker: ShippedBroker, fleet, publish, counting, chrony_server
):
    first = chrony_server()
    fleet(fleet_text(counting.address, (first.host, first.port)))
    assert publish(preflight=True).rc == 0
    asked = counting.requests
    fleet(fleet_text((first.host, first.port), counting.address))
    run = publish(preflight=True)
    assert run.rc == 0, run.err
    assert f"{counting.host}:{counting.port}  ok" in run.out
    assert counting.requests > asked


def test_a_dry_run_shows_the_verdict_and_publishes_nothing(
    broker: ShippedBroker, fleet, publish, silent
):
    fleet(fleet_text(silent))
    run = publish("--dry-run", preflight=True)
    assert run.rc == 0
    assert f"{silent[0]}:{silent[1]}  timeout" in run.out
    assert "a publish would be blocked" in run.out
    assert retained(broker) == {}


def test_no_preflight_queries_nothing(broker: ShippedBroker, fleet, publish, counting):
    fleet(fleet_text(counting.address))
    run = publish("--no-preflight", preflight=True)
    assert run.rc == 0, run.err
    assert "preflight" not in run.out
    assert counting.requests == 0


def test_a_canary_publish_is_blocked_by_a_silent_new_server(
    broker: ShippedBroker, fleet, publish, counting, silent
):
    fleet(fleet_text(counting.address))
    assert publish(preflight=True).rc == 0
    before = retained(broker)[US_EAST]
    fleet(fleet_text(silent, counting.address))
    run = publish("--canary", "10%", preflight=True)
    assert run.rc == EXIT_PREFLIGHT
    assert f"{silent[0]}:{silent[1]}  timeout" in run.out
    assert retained(broker)[US_EAST] == before


def test_two_entries_resolving_to_one_address_block_the_publish(
    broker: ShippedBroker, fleet, publish, chrony_server
):
    """An agent counts a server once by address: a second spelling never confirms the first."""
    ntp = chrony_server(address="127.0.0.1")
    other = chrony_server()
    fleet(fleet_text(("127.0.0.1", ntp.port), ("localhost", ntp.port), (other.host, other.port)))
    run = publish(preflight=True)
    assert run.rc == EXIT_PREFLIGHT
    assert (
        f"preflight  us-east  localhost:{ntp.port}  same-address  127.0.0.1, as "
        f"127.0.0.1:{ntp.port}: an agent counts them as one server"
    ) in run.out
    assert "1 list entries share an address with an earlier entry" in run.err
    assert US_EAST not in retained(broker)


def test_an_ipv4_mapped_spelling_of_an_earlier_entry_is_the_same_address(
    broker: ShippedBroker, fleet, publish, chrony_server
):
    ntp = chrony_server()
    fleet(fleet_text((ntp.host, ntp.port), (f"::ffff:{ntp.host}", ntp.port)))
    run = publish("--dry-run", preflight=True)
    assert f"[::ffff:{ntp.host}]:{ntp.port}  same-address  {ntp.host}" in run.out
    assert "a publish would be blocked" in run.out


def test_distinct_servers_share_no_address(broker: ShippedBroker, fleet, publish, chrony_server):
    first, second = chrony_server(), chrony_server()
    fleet(fleet_text((first.host, first.port), (second.host, second.port)))
    run = publish(preflight=True)
    assert run.rc == 0, run.err
    assert "same-address" not in run.out
