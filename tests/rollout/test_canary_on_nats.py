"""The canary on a 3-node NATS cluster running its shipped security configuration
(broker/nats/make-security-conf): every agent on its own identity, `clockfleet publish
--canary` as `publisher`, `clockfleet rollout status` as `operator`. NATS's permissions
once let the publisher read no reports, and the canary then saw "0 known agents"."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.devstack.nats import NatsCluster, start_cluster
from clockfleet.protocol import rollout
from tests.agent.servicekit import make_keys
from tests.helpers import wait_until
from tests.rollout.kit import BASE_VERSION, Region, agent_ids, change_id_for

pytestmark = pytest.mark.skipif(
    shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists(),
    reason="nats-server not installed (make test installs it)",
)

CANARY_V = BASE_VERSION + 2
ENDING_V = BASE_VERSION + 3


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    rundir = Path(tempfile.mkdtemp(prefix="cf-nats-canary-", dir="/tmp"))
    c = start_cluster(rundir)
    yield c
    c.stop()
    shutil.rmtree(rundir, ignore_errors=True)


@pytest.fixture
def region(cluster: NatsCluster, short_tmp: Path) -> Iterator[Region]:
    """The suite's region r1 (tests/rollout/conftest.py), on the cluster instead."""
    r = Region(short_tmp, cluster, make_keys(short_tmp / "keys"))
    r.seed_versions()
    yield r


def _all_on(region: Region, servers: list[tuple[str, int]], version: int) -> bool:
    want = rollout.list_digest(servers)
    return region.digests() == {want} and region.versions() == {version}


def test_a_healthy_canary_is_promoted_on_the_shipped_nats_configuration(
    region, start_agents, chrony_server
):
    old, new_server = chrony_server(), chrony_server()
    new = [(new_server.host, new_server.port), (old.host, old.port)]
    start_agents(agent_ids(change_id_for(CANARY_V, new), 10, total=20, in_cohort=2))
    region.write([(old.host, old.port)])
    assert region.publish().returncode == 0
    wait_until(lambda: _all_on(region, [(old.host, old.port)], BASE_VERSION + 1), 60)

    region.write(new)
    done = region.publish("--canary", "10%", "--bake", "3")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "cohort 2 of 20 known agents" in done.stdout
    wait_until(lambda: _all_on(region, new, ENDING_V), 30, "every agent on the new list")
    row = region.status()  # as operator
    assert (row["phase"], row["cohort"], row["ok"], row["failing"]) == ("promoted", 2, 2, 0)
