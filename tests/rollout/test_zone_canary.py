"""A change of a region's time zone in the fleet file goes out as a canary, like a list
change, on the shipped Mosquitto with real agents and real chronyd: the cohort's hosts get
the new zone first (their /etc/localtime, under a temporary root per agent: this machine's
zone is never touched), the decision judges their reports, then every host gets it
(promoted) or the cohort's hosts get the old one back (aborted: their PBX reload failed)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.agent.fleet import Fleet
from clockfleet.agent.service import Agent
from clockfleet.protocol import codec, rollout
from clockfleet.protocol.messages import Report, ServerList
from clockfleet.publisher.canary import zone_change_id
from tests.agent.servicekit import make_agent
from tests.helpers import wait_until
from tests.rollout.kit import BASE_VERSION, Region, agent_ids

OLD, NEW = "Europe/Dublin", "Asia/Kolkata"
CANARY_V = BASE_VERSION + 2  # the first publish is BASE + 1
ENDING_V = BASE_VERSION + 3
CHANGE = zone_change_id(CANARY_V, NEW)
ZONES = "/usr/share/zoneinfo"


def host_root(root: Path) -> Path:
    """A host's zone files (Dublin and Kolkata, as its tzdata ships them), in Dublin."""
    for zone in (OLD, NEW):
        (root / ZONES.lstrip("/") / zone).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f"{ZONES}/{zone}", root / ZONES.lstrip("/") / zone)
    (root / "etc").mkdir()
    os.symlink(f"{ZONES}/{OLD}", root / "etc/localtime")
    return root


def host_zone(root: Path) -> str:
    return os.readlink(root / "etc/localtime").removeprefix(f"{ZONES}/")


class ZoneHosts:
    """Agents of r1 that manage the zone under a root of their own and run `command` after
    a change; `seen` keeps every zone each one reported, in order."""

    def __init__(self, region: Region, tmp: Path) -> None:
        self.region = region
        self.tmp = tmp
        self.fleets: list[Fleet] = []
        self.seen: dict[str, list[str | None]] = {}

    def start(self, ids: list[str], command: list[str] | None = None) -> dict[str, Path]:
        """Start them; agent -> its host root."""
        self.region.broker.add(*ids)
        self.region.placed = sorted(set(self.region.placed) | set(ids))
        roots = {aid: host_root(self.tmp / "hosts" / aid) for aid in ids}
        agents = [
            make_agent(
                self.region.broker, aid, region="r1", keys=self.region.keys,
                tz_root=roots[aid], zone_change_command=command, zone_change_timeout_s=10.0,
            )
            for aid in ids
        ]  # fmt: skip
        fleet = Fleet(workers=4)
        for a in agents:
            a.observers.on_report = self._seen
            fleet.add(a)
        fleet.start()
        self.fleets.append(fleet)
        self.region.agents = agents
        return roots

    def _seen(self, agent: Agent, report: Report) -> None:
        self.seen.setdefault(agent.id, []).append(report.timezone)

    def zones(self) -> dict[str, str | None]:
        return {a.id: a.last_report.timezone if a.last_report else None for a in self.region.agents}


@pytest.fixture
def hosts(region: Region, short_tmp: Path) -> Iterator[ZoneHosts]:
    h = ZoneHosts(region, short_tmp)
    yield h
    for f in h.fleets:
        f.stop(timeout_s=3.0)


def the_list(region: Region) -> ServerList:
    sl, _ = codec.decode(ServerList, region.broker_payload("clock/v1/regions/r1/servers"))
    return sl


def in_dublin(region: Region, hosts: ZoneHosts, chrony_server, command=None):
    """20 hosts of r1, 2 of them in the cohort of the change to Kolkata, published and
    reported in Dublin: (agent -> root, the cohort, the fleet file's servers)."""
    ntp = chrony_server()
    servers = [(ntp.host, ntp.port)]
    ids = agent_ids(CHANGE, 10, total=20, in_cohort=2)
    roots = hosts.start(ids, command)
    region.write(servers, timezone=OLD)
    assert region.publish().returncode == 0
    wait_until(lambda: set(hosts.zones().values()) == {OLD}, 30, "every host on Dublin")
    return roots, {a for a in ids if rollout.in_cohort(CHANGE, a, 10)}, servers


def test_a_zone_change_reaches_the_cohort_first_and_is_promoted_to_every_host(
    region, hosts, chrony_server
):
    roots, cohort, servers = in_dublin(region, hosts, chrony_server)
    region.write(servers, timezone=NEW)

    sent = region.publish("--canary", "10%", "--bake", "3", "--no-wait")

    assert sent.returncode == 0, sent.stdout + sent.stderr
    wait_until(lambda: {a for a, z in hosts.zones().items() if z == NEW} == cohort, 20, "cohort")
    assert {a: host_zone(r) for a, r in roots.items()} == {
        a: NEW if a in cohort else OLD for a in roots
    }
    canary_list = the_list(region)
    assert canary_list.zone_canary is not None
    assert (canary_list.timezone, canary_list.zone_canary.timezone) == (OLD, NEW)
    row = region.status()
    assert (row["phase"], row["change"], row["cohort"], row["ok"]) == ("baking", CHANGE, 2, 2)
    # The same file again goes on deciding and sends nothing: the rest's profiles are held.
    again = region.publish("--dry-run")
    assert again.returncode == 0 and "would publish" not in again.stdout, again.stdout
    region.write(servers, timezone="America/Chicago")
    other = region.publish()
    assert other.returncode == 2 and "in progress" in other.stderr, other.stdout + other.stderr
    region.write(servers, timezone=NEW)

    done = region.rollout("run")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "promoted" in done.stdout and "18 profiles" in done.stdout
    wait_until(lambda: set(hosts.zones().values()) == {NEW}, 20, "every host on Kolkata")
    assert {host_zone(r) for r in roots.values()} == {NEW}
    assert {a.last_report.utc_offset_s for a in region.agents} == {19800}
    ended = the_list(region)
    assert (ended.version, ended.timezone, ended.zone_canary) == (ENDING_V, NEW, None)
    row = region.status()
    assert (row["phase"], row["cohort"], row["ok"], row["failing"]) == ("promoted", 2, 2, 0)


def test_a_cohort_whose_pbx_reload_fails_aborts_and_gets_the_old_zone_back(
    region, hosts, chrony_server
):
    reload = ["/bin/sh", "-c", "echo 'pbx reload: no such unit' >&2; exit 1"]
    roots, cohort, servers = in_dublin(region, hosts, chrony_server, reload)
    region.write(servers, timezone=NEW)

    done = region.publish("--canary", "10%", "--bake", "60")

    assert done.returncode == 3, done.stdout + done.stderr
    assert "aborted" in done.stdout and "zone_change_command failed" in done.stdout
    wait_until(
        lambda: all(hosts.seen[a][-1] == OLD and NEW in hosts.seen[a] for a in cohort),
        20,
        "the cohort back on Dublin",
    )
    assert {host_zone(r) for r in roots.values()} == {OLD}
    outside = {a: zs for a, zs in hosts.seen.items() if a not in cohort and NEW in zs}
    assert outside == {}, "a host outside the cohort got the new zone"
    ended = the_list(region)
    assert (ended.version, ended.timezone, ended.rollout.phase) == (ENDING_V, OLD, "aborted")
    row = region.status()
    assert (row["phase"], row["cohort"], row["failing"]) == ("aborted", 2, 2), row


def test_a_change_of_servers_and_zone_together_is_refused_under_a_canary_policy(
    region, chrony_server
):
    first, second = chrony_server(), chrony_server()
    region.write([(first.host, first.port)], timezone=OLD)
    assert region.publish().returncode == 0
    region.write([(second.host, second.port)], timezone=NEW)

    done = region.publish("--canary", "10%")

    assert done.returncode == 2, done.stdout + done.stderr
    assert "servers and its timezone changed together" in done.stderr
    listed = the_list(region)
    assert (listed.version, listed.timezone) == (BASE_VERSION + 1, OLD)
