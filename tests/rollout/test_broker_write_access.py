"""Broker write access without the signing key never moves a region (docs/trust.md).

Anyone who can write to the broker can put back any message ever published: any agent may
read every region list, so any agent may have recorded last week's canary. And anyone who
can write can put an unsigned canary there. The real CLI, on the shipped broker, with
agents on their own identities: whatever the operator runs next, the region ends on the
operator's current list, and the broker holds no stale list for a fresh agent to follow."""

from __future__ import annotations

import json

import pytest

from clockfleet.protocol import codec, rollout
from tests.agent.servicekit import list_object
from tests.collector.kit import publish_as
from tests.helpers import wait_until
from tests.rollout.kit import (
    BASE_VERSION,
    CountingRelay,
    Region,
    agent_ids,
    change_id_for,
    silent_socket,
)

TOPIC = "clock/v1/regions/r1/servers"


def _retained(region: Region) -> dict:
    """The region list the broker holds now, as the operator reads it."""
    done = region.rollout("status", "--json", identity="operator")
    assert done.returncode == 0, done.stderr
    [row] = [r for r in json.loads(done.stdout)["regions"] if r["region"] == "r1"]
    return row


def _agents_on(region: Region, servers: list[tuple[str, int]]) -> bool:
    want = rollout.list_digest(servers)
    return region.digests() == {want} and all(a.last_report.ok for a in region.agents)


def _recorded_canary(region: Region, start_agents, chrony_server) -> tuple[bytes, list, list]:
    """Last week: a canary that was promoted. Returns the canary's payload as any agent saw
    it, the canary's servers, and the operator's current servers (since changed again)."""
    old, canary_server, current = chrony_server(), chrony_server(), chrony_server()
    old_list = [(old.host, old.port)]
    canary_list = [(canary_server.host, canary_server.port), (old.host, old.port)]
    start_agents(agent_ids(change_id_for(BASE_VERSION + 2, canary_list), 50, total=6, in_cohort=3))
    region.write(old_list)
    assert region.publish().returncode == 0
    wait_until(lambda: _agents_on(region, old_list), 30, "agents on the old list")
    region.write(canary_list)
    assert region.publish("--canary", "50%", "--no-wait").returncode == 0
    seen = region.broker_payload(TOPIC)
    assert json.loads(seen)["canary"] is not None
    assert region.rollout("promote", "--region", "r1").returncode == 0
    current_list = [(current.host, current.port)]
    region.write(current_list)
    assert region.publish().returncode == 0
    wait_until(lambda: _agents_on(region, current_list), 30, "agents on the current list")
    return seen, canary_list, current_list


OPERATOR_NEXT = {
    "rollout run": ("rollout", "run"),
    "rollout promote": ("rollout", "promote", "--region", "r1"),
    "rollout abort": ("rollout", "abort", "--region", "r1"),
    "publish": ("publish",),
}


@pytest.mark.parametrize("command", sorted(OPERATOR_NEXT))
def test_a_replayed_canary_ends_on_the_operators_current_list_whatever_runs_next(
    region, start_agents, chrony_server, command
):
    replay, _, current = _recorded_canary(region, start_agents, chrony_server)
    issued = _retained(region)["version"]

    publish_as(region.broker, "publisher", [(TOPIC, replay)], retain=True)  # the attacker
    wait_until(lambda: _retained(region)["phase"] == "refused", 10, "the replay seen as stale")
    assert "stale" in _retained(region)["reason"]

    verb, *rest = OPERATOR_NEXT[command]
    done = region.publish(*rest[1:]) if verb == "publish" else region.rollout(*rest)

    assert done.returncode == 0, done.stdout + done.stderr
    held = json.loads(region.broker_payload(TOPIC))
    assert held["servers"] == [{"host": h, "port": p} for h, p in current]
    assert "canary" not in held and held["version"] > issued
    wait_until(lambda: _agents_on(region, current), 30, "agents still on the current list")


def test_an_unsigned_canary_does_not_lock_the_region_and_the_next_publish_goes_through(
    region, start_agents, chrony_server
):
    first, second = chrony_server(), chrony_server()
    start_agents(["pbx-a", "pbx-b"])
    region.write([(first.host, first.port)])
    assert region.publish().returncode == 0
    unsigned = list_object(
        "r1",
        BASE_VERSION + 7,
        [(first.host, first.port)],
        canary={
            "id": "c9-00000000", "percent": 100,
            "servers": [{"host": "192.0.2.66", "port": 123}],
            "bake_s": 60, "max_failing_pct": 10, "min_reported_pct": 80,
            "offset_tolerance_s": 0.5,
        },
    )  # fmt: skip
    publish_as(region.broker, "publisher", [(TOPIC, json.dumps(unsigned).encode())], retain=True)

    region.write([(second.host, second.port)])
    done = region.publish()

    assert done.returncode == 0, done.stdout + done.stderr
    assert "rollout" not in done.stderr
    held = json.loads(region.broker_payload(TOPIC))
    assert held["servers"] == [{"host": second.host, "port": second.port}]
    assert "sig" in held and "canary" not in held
    wait_until(lambda: _agents_on(region, [(second.host, second.port)]), 30, "agents follow")


def test_rollout_abort_replaces_an_unsigned_canary_with_the_files_list(
    region, start_agents, chrony_server
):
    first = chrony_server()
    start_agents(["pbx-a"])
    region.write([(first.host, first.port)])
    assert region.publish().returncode == 0
    unsigned = list_object(
        "r1", BASE_VERSION + 7, [("192.0.2.66", 123)],
        canary={"id": "c9-00000000", "percent": 100,
                "servers": [{"host": "192.0.2.67", "port": 123}], "bake_s": 60,
                "max_failing_pct": 10, "min_reported_pct": 80, "offset_tolerance_s": 0.5},
    )  # fmt: skip
    publish_as(region.broker, "publisher", [(TOPIC, json.dumps(unsigned).encode())], retain=True)

    done = region.rollout("abort", "--region", "r1")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "replaced by the fleet file's list" in done.stdout
    held = json.loads(region.broker_payload(TOPIC))
    assert held["servers"] == [{"host": first.host, "port": first.port}] and "sig" in held


def test_agents_placed_elsewhere_that_claim_the_region_do_not_dilute_a_failing_canary(
    region, start_agents, chrony_server
):
    """2 agents of r1 fail the canary; 40 agents the fleet file places in r2 write reports
    claiming to be healthy cohort members of r1 (any agent may write what it likes into its
    own report). The canary is judged by r1's own agents only: it aborts."""
    old = chrony_server()
    silent = silent_socket()
    relay = CountingRelay(silent.getsockname())
    try:
        new = [relay.address, (old.host, old.port)]
        change = change_id_for(BASE_VERSION + 2, new)
        start_agents(agent_ids(change, 10, total=20, in_cohort=2))
        liars = [a for n in range(2000) if rollout.in_cohort(change, a := f"liar-{n:04d}", 10)]
        liars = liars[:40]

        def write(servers: list[tuple[str, int]]) -> None:
            region.write(servers)
            r2 = (
                f"  r2:\n    timezone: UTC\n    servers: [{{host: {old.host}, port: {old.port}}}]\n"
            )
            placed_in_r2 = "".join(f"  {a}: {{region: r2}}\n" for a in liars)
            text = region.fleet_file.read_text().replace("regions:\n", f"regions:\n{r2}")
            region.fleet_file.write_text(text.replace("agents:\n", f"agents:\n{placed_in_r2}"))

        write([(old.host, old.port)])
        assert region.publish().returncode == 0
        wait_until(lambda: _agents_on(region, [(old.host, old.port)]), 30, "agents on the list")
        claim = {
            "schema": "clock.report/1", "region": "r1", "list_version": BASE_VERSION + 2,
            "ok": True, "server": {"host": relay.address[0], "port": relay.address[1]},
            "offset_s": 0.0001, "delay_s": 0.0002, "stratum": 2, "leap": 0,
            "discipline": "observe", "timezone": "UTC", "at": codec.utcnow_iso(),
            "tried": [{"host": relay.address[0], "port": relay.address[1], "outcome": "ok"}],
            "cohort": "canary", "change": change, "list_digest": rollout.list_digest(new),
        }  # fmt: skip
        region.broker.add(*liars)
        for liar in liars:  # each writes only its own report, as the ACL allows
            body = json.dumps({**claim, "agent": liar}).encode()
            publish_as(region.broker, liar, [(f"clock/v1/agents/{liar}/report", body)], retain=True)

        write(new)
        done = region.publish("--canary", "10%", "--bake", "60")

        assert done.returncode == 3, done.stdout + done.stderr
        assert "cohort 2 of 20 known agents" in done.stdout
        assert "40 agents claim this region in their reports" in done.stdout
        row = _retained(region)
        assert (row["phase"], row["cohort"], row["failing"]) == ("aborted", 2, 2), row
    finally:
        relay.close()
        silent.close()
