"""The canary's wire contract: the cohort function, the strict decoder, the signature, and
an agent's reading of a canary list (which servers, which side, what its report says)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clockfleet.agent.report import job_for
from clockfleet.protocol import codec, rollout, signing
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.messages import ServerList
from tests.agent.servicekit import list_object, make_keys

OLD = [("127.0.0.2", 123)]
NEW = [("127.0.0.3", 123), ("127.0.0.2", 123)]


def canary(percent: float = 10, servers=NEW, change: str = "c7-abcdef12") -> dict:
    return {
        "id": change,
        "percent": percent,
        "servers": [{"host": h, "port": p} for h, p in servers],
        "bake_s": 60,
        "max_failing_pct": 10,
        "min_reported_pct": 80,
        "offset_tolerance_s": 0.5,
    }


def payload(obj: dict) -> bytes:
    return json.dumps(obj).encode()


def test_the_cohort_is_about_the_percentage_asked_for():
    inside = sum(rollout.in_cohort("c1-x", f"pbx-{n}", 10) for n in range(10_000))
    assert 900 < inside < 1100


def test_different_changes_draw_different_cohorts():
    ids = [f"pbx-{n}" for n in range(1000)]
    a = {i for i in ids if rollout.in_cohort("c1-aaaa", i, 10)}
    b = {i for i in ids if rollout.in_cohort("c2-bbbb", i, 10)}
    assert a != b and len(a & b) < len(a) / 2


def test_the_cohort_function_is_the_documented_hash():
    import hashlib

    h = int(hashlib.sha256(b"c7-abcdef12/pbx-01").hexdigest()[:8], 16) % 10000
    assert rollout.cohort_bucket("c7-abcdef12", "pbx-01") == h


@pytest.mark.parametrize("percent", [0, -1, 100.5, 1e308])
def test_a_canary_percentage_outside_0_to_100_is_refused(percent):
    obj = list_object("r1", 7, OLD, canary=canary(percent))
    with pytest.raises(Rejected) as exc:
        codec.decode(ServerList, payload(obj), topic_id="r1")
    assert exc.value.reason == "invalid-field"


def test_a_canary_naming_a_bad_host_is_refused():
    obj = list_object("r1", 7, OLD, canary=canary(servers=[("ntp;rm -rf", 123)]))
    with pytest.raises(Rejected) as exc:
        codec.decode(ServerList, payload(obj), topic_id="r1")
    assert exc.value.reason == "bad-host"


def test_a_tampered_canary_fails_the_signature(tmp_path: Path):
    keys = make_keys(tmp_path)
    signed = signing.sign(list_object("r1", 7, OLD, canary=canary()), keys.key)
    signed["canary"]["servers"][0]["host"] = "192.0.2.66"
    with pytest.raises(Rejected) as exc:
        signing.verify(signed, keys.trust)
    assert exc.value.reason == "bad-signature"


def test_an_old_reader_keeps_the_current_servers():
    """A decoder that knows nothing of `canary` (unknown fields are ignored) sees the list."""
    obj = list_object("r1", 7, OLD, canary=canary())
    raw = json.loads(payload(obj))
    assert [(s["host"], s["port"]) for s in raw["servers"]] == OLD


@pytest.mark.parametrize("agent", ["pbx-000", "pbx-001", "pbx-002", "pbx-003", "pbx-004"])
def test_an_agent_probes_its_side_of_the_canary_and_says_which(agent):
    sl, _ = codec.decode(
        ServerList, payload(list_object("r1", 7, OLD, canary=canary(50))), topic_id="r1"
    )
    job = job_for(agent, sl, None, None, False)
    inside = rollout.in_cohort("c7-abcdef12", agent, 50)
    probed = [(s.host, s.port) for s in job.server_list.servers]
    assert (probed, job.cohort) == ((NEW, "canary") if inside else (OLD, "rest"))
