"""What an agent trusts when it remembers nothing (a wiped state dir), and how a retired
signing key stops being trusted. The policy (docs/trust.md): with no memory, the broker's
copy is accepted when a key in the agent's trust directory signed it, however old its
version; what protects such an agent from an old list naming a since-retired server is
retiring the key that signed it, i.e. removing its public key from the trust directory."""

from __future__ import annotations

import shutil

from clockfleet.protocol import signing
from tests.agent.servicekit import PREFIX, Publisher, Watcher, hosted, make_agent, make_keys
from tests.helpers import wait_until


def test_a_wiped_agent_accepts_an_old_list_signed_by_a_trusted_key(
    broker, keys, chrony_server, short_tmp
):
    ntp = chrony_server()
    pub = Publisher(broker, keys)
    pub.server_list("r1", 3, [(ntp.host, ntp.port)])
    reports = Watcher(broker, f"{PREFIX}/agents/+/report")
    wiped = short_tmp / "state"
    wiped.mkdir()
    agent = make_agent(broker, "a1", keys=keys, state_dir=wiped)
    try:
        with hosted(agent):
            report = reports.wait_for(lambda m: m["agent"] == "a1")
    finally:
        reports.close()
        pub.close()
    assert report["list_version"] == 3 and report["ok"] is True


def test_a_list_signed_by_a_retired_key_is_refused_by_a_wiped_agent(
    broker, chrony_server, short_tmp
):
    old = make_keys(short_tmp / "old", key_id="ops-2025")
    new = make_keys(short_tmp / "new", key_id="ops-2026")
    # The operator retired ops-2025: the trust directory holds only the new public key.
    trust_dir = short_tmp / "trust"
    trust_dir.mkdir()
    shutil.copy(new.pub, trust_dir)
    ntp = chrony_server()
    pub = Publisher(broker, old)
    pub.server_list("r1", 3, [(ntp.host, ntp.port)])  # a replayed, once-valid list
    agent = make_agent(
        broker,
        "a1",
        keys=None,
        trust=signing.load_trust([trust_dir]),
        state_dir=short_tmp / "s",
    )
    try:
        with hosted(agent):
            wait_until(lambda: agent.counters["unknown-key"] >= 1)
            assert agent.server_list is None
            # the same servers under the current key are taken at once
            pub.keys = new
            pub.server_list("r1", 4, [(ntp.host, ntp.port)])
            wait_until(lambda: agent.server_list is not None and agent.server_list.version == 4)
    finally:
        pub.close()
