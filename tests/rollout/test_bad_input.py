"""Bad input to a rollout gives a clear error and applies nothing: a canary percentage
outside 0..100, a cohort of zero agents, an unsigned or tampered canary list."""

from __future__ import annotations

import json

import pytest

from clockfleet.protocol import signing
from tests.agent.servicekit import Publisher, hosted, list_object, make_agent
from tests.helpers import wait_until
from tests.rollout.kit import BASE_VERSION


@pytest.mark.parametrize("percent", ["-5%", "101%", "ten", "150"])
def test_a_canary_percentage_outside_0_to_100_is_refused_before_anything_is_sent(region, percent):
    region.write([("127.0.0.2", 123)])
    state_before = (region.rundir / ".publisher-state.json").read_text()

    done = region.publish(f"--canary={percent}")

    assert done.returncode == 2
    assert "0..100" in done.stderr or "percentage" in done.stderr
    assert (region.rundir / ".publisher-state.json").read_text() == state_before


def test_a_cohort_of_zero_agents_is_refused_and_nothing_is_published(
    region, start_agents, chrony_server
):
    old, new_server = chrony_server(), chrony_server()
    start_agents(["pbx-a", "pbx-b", "pbx-c"])
    region.write([(old.host, old.port)])
    assert region.publish().returncode == 0
    wait_until(lambda: region.versions() == {BASE_VERSION + 1}, 20, "agents on the list")
    region.write([(new_server.host, new_server.port)])

    done = region.publish("--canary", "0.01%")

    assert done.returncode == 2, done.stdout + done.stderr
    assert "empty (zero agents" in done.stderr
    assert region.status()["version"] == BASE_VERSION + 1  # the broker's list is untouched


@pytest.mark.parametrize("how", ["unsigned", "tampered"])
def test_an_agent_applies_nothing_from_an_unsigned_or_tampered_canary_list(broker, region, how):
    agent = make_agent(broker, "pbx-000", region="r1", keys=region.keys)
    pub = Publisher(broker, region.keys)
    try:
        with hosted(agent):
            pub.server_list("r1", 5, [("127.0.0.2", 123)])
            wait_until(lambda: agent.server_list is not None, 10, "the first list")
            canary = {
                "id": "c6-00000000", "percent": 100,
                "servers": [{"host": "192.0.2.66", "port": 123}],
                "bake_s": 60, "max_failing_pct": 10, "min_reported_pct": 80,
                "offset_tolerance_s": 0.5,
            }  # fmt: skip
            obj = list_object("r1", 6, [("127.0.0.2", 123)], canary=canary)
            if how == "tampered":
                obj = signing.sign({**obj, "canary": {**canary, "percent": 1}}, region.keys.key)
                obj["canary"] = canary  # widened to the whole region after signing
            pub.raw("clock/v1/regions/r1/servers", json.dumps(obj).encode())
            reason = "unsigned" if how == "unsigned" else "bad-signature"
            wait_until(lambda: agent.counters[reason] >= 1, 10, f"the list refused as {reason}")
            assert agent.server_list.version == 5 and agent.server_list.canary is None
    finally:
        pub.close()
