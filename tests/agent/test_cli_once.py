"""`clockfleet agent --once` as a user runs it: a subprocess against real Mosquitto and chronyd,
lists written by a plain paho client in the contract's format."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clockfleet import devstack
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol import codec
from clockfleet.protocol.messages import Report
from tests.agent.fakentp import FakeNtpServer
from tests.agent.servicekit import PREFIX, Watcher
from tests.helpers import next_loopback_address


def run_agent(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clockfleet", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def once_args(broker: ShippedBroker | str, keys, state: Path, *extra: str) -> list[str]:
    """`agent --once` as a1; `broker` a string: a broker URL with no identity (unreachable)."""
    login = broker.login("a1") if isinstance(broker, ShippedBroker) else ["--broker", broker]
    return [
        "--id",
        "a1",
        "--region",
        "r1",
        "--once",
        "--backend",
        "observe",
        *login,
        "--trust-key",
        str(keys.pub),
        "--state-dir",
        str(state),
        "--no-timezone",
        "--timeout",
        "15",
        *extra,
    ]


def test_once_reports_the_first_healthy_server_in_list_order(
    broker, keys, publisher, chrony_server, short_tmp
):
    first, second = chrony_server(), chrony_server()
    publisher.server_list("r1", 7, [(first.host, first.port), (second.host, second.port)])

    done = run_agent(*once_args(broker, keys, short_tmp / "state"))

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    codec.decode(Report, done.stdout.encode(), topic_id="a1")  # what readers accept
    assert report["ok"] is True
    assert report["list_version"] == 7
    assert report["server"] == {"host": first.host, "port": first.port}
    assert abs(report["offset_s"]) < 0.05
    assert [t["outcome"] for t in report["tried"]] == ["ok", "not-tried"]


def test_once_report_is_retained_on_the_broker(broker, keys, publisher, chrony_server, short_tmp):
    ntp = chrony_server()
    publisher.server_list("r1", 3, [(ntp.host, ntp.port)])
    done = run_agent(*once_args(broker, keys, short_tmp / "state"))
    assert done.returncode == 0, done.stderr

    watcher = Watcher(broker, f"{PREFIX}/agents/a1/report")
    try:
        retained = watcher.wait_for(lambda m: m["list_version"] == 3, timeout_s=10)
    finally:
        watcher.close()
    assert retained == json.loads(done.stdout)


def test_once_fails_over_past_a_silent_and_a_kiss_o_death_server(
    broker, keys, publisher, chrony_server, short_tmp
):
    silent = devstack.silent_udp(next_loopback_address())
    good = chrony_server()
    config = short_tmp / "agent.yaml"
    config.write_text("probe:\n  timeout_s: 0.3\n  samples: 2\n")
    with FakeNtpServer("kod", kiss="DENY") as kod:
        silent_at = silent.getsockname()
        publisher.server_list(
            "r1", 4, [(silent_at[0], silent_at[1]), (kod.host, kod.port), (good.host, good.port)]
        )
        done = run_agent(*once_args(broker, keys, short_tmp / "s", "--config", str(config)))
    silent.close()

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(t["host"], t["port"], t["outcome"]) for t in report["tried"]] == [
        (silent_at[0], silent_at[1], "timeout"),
        (kod.host, kod.port, "kod-deny"),
        (good.host, good.port, "ok"),
    ]
    assert report["server"] == {"host": good.host, "port": good.port}


def test_once_with_no_healthy_server_exits_1_with_a_failed_report(
    broker, keys, publisher, short_tmp
):
    silent = devstack.silent_udp(next_loopback_address())
    host, port = silent.getsockname()
    config = short_tmp / "agent.yaml"
    config.write_text("probe:\n  timeout_s: 0.2\n")
    publisher.server_list("r1", 2, [(host, port)])
    done = run_agent(*once_args(broker, keys, short_tmp / "s", "--config", str(config)))
    silent.close()

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert "server" not in report
    assert report["discipline"] == "none"
    assert report["tried"][0]["outcome"] == "timeout"


def test_once_without_a_broker_syncs_from_the_cached_list(
    broker, keys, publisher, chrony_server, short_tmp
):
    ntp = chrony_server()
    publisher.server_list("r1", 9, [(ntp.host, ntp.port)])
    state = short_tmp / "state"
    assert run_agent(*once_args(broker, keys, state)).returncode == 0
    publisher.close()
    broker.stop()

    done = run_agent(*once_args(broker, keys, state))

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["list_version"] == 9
    assert report["server"] == {"host": ntp.host, "port": ntp.port}
    assert "syncing from the cached list" in done.stderr


def test_once_refuses_a_tampered_cache(broker, keys, publisher, chrony_server, short_tmp):
    ntp = chrony_server()
    publisher.server_list("r1", 9, [(ntp.host, ntp.port)])
    state = short_tmp / "state"
    assert run_agent(*once_args(broker, keys, state)).returncode == 0
    publisher.close()
    broker.stop()
    cached = json.loads((state / "list.json").read_bytes())
    cached["servers"] = [{"host": "192.0.2.66", "port": 123}]  # an attacker's server
    (state / "list.json").write_text(json.dumps(cached))

    done = run_agent(*once_args(broker, keys, state))

    assert done.returncode == 2
    assert "cached list refused (bad-signature)" in done.stderr
    assert done.stdout == ""


def test_once_without_a_broker_or_a_cache_exits_2_with_one_line(keys, short_tmp):
    port = devstack.free_port()
    done = run_agent(*once_args(f"mqtt://127.0.0.1:{port}", keys, short_tmp / "empty"))

    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("clockfleet agent: broker unreachable and no cached server list")
    assert done.stdout == ""


def test_once_follows_the_profile_to_its_region_and_time_zone(
    broker, keys, publisher, chrony_server, short_tmp
):
    wrong, right = chrony_server(), chrony_server()
    publisher.server_list("r1", 1, [(wrong.host, wrong.port)], timezone="Europe/Dublin")
    publisher.server_list("r2", 5, [(right.host, right.port)], timezone="Europe/Berlin")
    publisher.profile("a1", "r2", "America/Chicago", 3)
    root = short_tmp / "root"
    args = once_args(broker, keys, short_tmp / "s")
    args.remove("--no-timezone")

    done = run_agent(*args, "--tz-root", str(root))

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["region"], report["list_version"]) == ("r2", 5)
    assert report["server"]["host"] == right.host
    assert report["timezone"] == "America/Chicago"
    assert report["profile_version"] == 3
    assert (root / "etc/localtime").readlink() == Path("/usr/share/zoneinfo/America/Chicago")


def test_once_uses_the_list_time_zone_when_no_profile_names_one(
    broker, keys, publisher, chrony_server, short_tmp
):
    ntp = chrony_server()
    publisher.server_list("r1", 1, [(ntp.host, ntp.port)], timezone="Europe/Dublin")
    root = short_tmp / "root"
    args = once_args(broker, keys, short_tmp / "s")
    args.remove("--no-timezone")

    done = run_agent(*args, "--tz-root", str(root), "--timezone", "UTC")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["timezone"] == "Europe/Dublin"
    assert (root / "etc/timezone").read_text() == "Europe/Dublin\n"


def test_once_with_no_list_on_the_broker_and_no_cache_exits_1(broker, keys, short_tmp):
    config = short_tmp / "agent.yaml"
    config.write_text("profile_grace_s: 0.2\n")
    done = run_agent(*once_args(broker, keys, short_tmp / "s", "--config", str(config)))

    assert done.returncode == 1
    assert "no server list for region r1" in done.stderr
    assert done.stdout == ""


def test_once_with_the_chrony_backend_hands_the_list_to_chronyd(
    broker, keys, publisher, chrony_server, chrony_client, short_tmp
):
    first, second = chrony_server(), chrony_server()
    publisher.server_list("r1", 8, [(first.host, first.port), (second.host, second.port)])
    config = short_tmp / "agent.yaml"
    config.write_text(
        "backend_options:\n"
        f"  sourcedir: {chrony_client.sourcedir}\n"
        f"  socket: {chrony_client.socket}\n"
    )
    args = once_args(broker, keys, short_tmp / "s", "--config", str(config))
    args[args.index("observe")] = "chrony"

    done = run_agent(*args)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["discipline"] == "chrony"
    assert report["server"]["host"] == first.host
    assert first.host in chrony_client.sources()
