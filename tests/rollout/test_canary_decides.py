"""`clockfleet publish --canary` on a region of 20 agents, against a real Mosquitto and real
chronyd servers, decided with no operator action: a silent new first server aborts, a healthy
one promotes. The issue's must-show."""

from __future__ import annotations

from clockfleet.protocol import rollout
from tests.helpers import wait_until
from tests.rollout.kit import BASE_VERSION, CountingRelay, agent_ids, change_id_for, silent_socket

CANARY_V = BASE_VERSION + 2  # the first publish is BASE + 1
ENDING_V = BASE_VERSION + 3


def _all_on(region, servers, version) -> bool:
    want = rollout.list_digest(servers)
    return (
        region.digests() == {want}
        and region.versions() == {version}
        and all(a.last_report.ok for a in region.agents)
    )


def test_a_silent_new_first_server_aborts_by_itself_and_only_the_cohort_queried_it(
    region, start_agents, chrony_server
):
    old = chrony_server()
    silent = silent_socket()
    relay = CountingRelay(silent.getsockname())
    try:
        new = [relay.address, (old.host, old.port)]
        ids = agent_ids(change_id_for(CANARY_V, new), 10, total=20, in_cohort=2)
        start_agents(ids)
        tried_relay: dict[str, int] = {}

        def seen(agent, report) -> None:
            if any((t.host, t.port) == relay.address and t.outcome != "not-tried"
                   for t in report.tried):  # fmt: skip
                tried_relay[agent.id] = tried_relay.get(agent.id, 0) + 1

        for a in region.agents:
            a.observers.on_report = seen
        region.write([(old.host, old.port)])
        assert region.publish().returncode == 0
        wait_until(lambda: _all_on(region, [(old.host, old.port)], BASE_VERSION + 1), 30)

        region.write(new)
        done = region.publish("--canary", "10%", "--bake", "60")

        assert done.returncode == 3, done.stdout + done.stderr
        assert "aborted" in done.stdout
        wait_until(lambda: _all_on(region, [(old.host, old.port)], ENDING_V), 20, "all on old")
        row = region.status()
        assert (row["phase"], row["cohort"], row["failing"]) == ("aborted", 2, 2), row
        cohort = {a for a in ids if rollout.in_cohort(change_id_for(CANARY_V, new), a, 10)}
        assert set(tried_relay) == cohort
        # Every query that reached the silent server is one of the cohort's probes (a cohort
        # agent may probe it more than once before the abort: each probe is one socket).
        assert len(relay.senders) == sum(tried_relay.values()) >= len(cohort) == 2
    finally:
        relay.close()
        silent.close()


def test_a_healthy_new_first_server_is_promoted_to_every_agent(region, start_agents, chrony_server):
    old, new_server = chrony_server(), chrony_server()
    new = [(new_server.host, new_server.port), (old.host, old.port)]
    ids = agent_ids(change_id_for(CANARY_V, new), 10, total=20, in_cohort=2)
    start_agents(ids)
    region.write([(old.host, old.port)])
    assert region.publish().returncode == 0
    wait_until(lambda: _all_on(region, [(old.host, old.port)], BASE_VERSION + 1), 30)

    region.write(new)
    done = region.publish("--canary", "10%", "--bake", "3")

    assert done.returncode == 0, done.stdout + done.stderr

    wait_until(lambda: _all_on(region, new, ENDING_V), 20, "every agent on the new list")
    row = region.status()
    assert (row["phase"], row["cohort"], row["ok"], row["failing"]) == ("promoted", 2, 2, 0)


def test_a_decider_killed_during_the_bake_time_is_continued_by_rollout_run(
    region, start_agents, chrony_server
):
    import signal
    import subprocess

    old, new_server = chrony_server(), chrony_server()
    new = [(new_server.host, new_server.port), (old.host, old.port)]
    start_agents(agent_ids(change_id_for(CANARY_V, new), 10, total=20, in_cohort=2))
    region.write([(old.host, old.port)])
    assert region.publish().returncode == 0
    wait_until(lambda: _all_on(region, [(old.host, old.port)], BASE_VERSION + 1), 30)
    region.write(new)
    cmd = region.command(
        "publish", "--config", str(region.fleet_file), "--no-preflight", "--canary", "10%"
    )
    decider = subprocess.Popen([*cmd, "--bake", "6"], stdout=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: CANARY_V in region.versions(), 20, "the canary reached the agents")
        decider.send_signal(signal.SIGKILL)
        decider.wait(10)
        assert region.status()["phase"] in ("canary", "baking")

        done = region.rollout("run")

        assert done.returncode == 0, done.stdout + done.stderr
        wait_until(lambda: _all_on(region, new, ENDING_V), 20, "every agent on the new list")
        assert region.status()["phase"] == "promoted"
    finally:
        if decider.poll() is None:
            decider.kill()
        decider.communicate(timeout=10)


def test_the_cohort_is_the_same_agents_after_they_reconnect(region, start_agents, chrony_server):
    old, new_server = chrony_server(), chrony_server()
    new = [(new_server.host, new_server.port), (old.host, old.port)]
    ids = agent_ids(change_id_for(CANARY_V, new), 10, total=20, in_cohort=2)
    fleet = start_agents(ids)
    region.write([(old.host, old.port)])
    assert region.publish().returncode == 0
    wait_until(lambda: _all_on(region, [(old.host, old.port)], BASE_VERSION + 1), 30)
    region.write(new)
    assert region.publish("--canary", "10%", "--no-wait").returncode == 0

    def cohort() -> set[str]:
        wait_until(lambda: region.versions() == {CANARY_V}, 20, "every agent on the canary")
        return {a.id for a in region.agents if a.last_report.cohort == "canary"}

    before = cohort()
    fleet.stop(timeout_s=3.0)
    start_agents(ids)  # new agent objects, new connections, nothing remembered
    after = cohort()

    assert len(before) == 2
    assert after == before
