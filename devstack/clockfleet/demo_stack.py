"""The demo's stack, started one step each: Mosquitto as shipped, the NTP servers, the
signing key, the first publish, the collector, Prometheus and the agents (docs/demo.md lists
the steps, their commands and their logs)."""

from __future__ import annotations

import contextlib
import functools
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from clockfleet import devstack
from clockfleet.demo_fleet import ADDRESSES, BEFORE, REPO, SKEW_S, DemoAgent, render
from clockfleet.demo_fleet import agents as demo_agents
from clockfleet.demo_procs import Processes, StepFailed, tail
from clockfleet.demo_prometheus import start_prometheus
from clockfleet.demo_say import say
from clockfleet.demo_settings import Settings
from clockfleet.devstack.mosquitto import ShippedBroker

KEY_ID = "demo"


@dataclass
class Stack:
    """Everything the demo started, and how to reach it."""

    rundir: Path
    broker: ShippedBroker
    signing_key: Path
    trust_key: Path
    fleet_file: Path
    collector_url: str
    prometheus_url: str
    servers: dict[str, tuple[str, int]]
    agents: list[DemoAgent] = field(default_factory=list)

    def as_(self, identity: str, *, tls: bool = False) -> list[str]:
        """Connection flags for one of the broker's identities (agents: over TLS, as from
        another host; the programs on the broker's host: its plain loopback listener)."""
        return self.broker.login(identity, tls=tls)

    def server_names(self) -> dict[tuple[str, int], str]:
        return {hp: name.lower().replace("_", "-") for name, hp in self.servers.items()}


# --- starting things, one step each -----------------------------------------------------


def start_broker(procs: Processes, rundir: Path, agents: list[DemoAgent]) -> ShippedBroker:
    """broker/mosquitto.conf as shipped, on loopback ports: identities written by
    broker/clockfleet-identities, broker/acl, TLS with a throw-away CA."""
    started: list[ShippedBroker] = []

    def launch() -> devstack.Daemon:
        started.append(devstack.start_shipped_mosquitto(rundir / "broker", [a.id for a in agents]))
        return started[0].daemon

    procs.daemon(
        "mosquitto (broker/mosquitto.conf as shipped: identities, ACL, TLS)",
        launch,
        rundir / "broker" / "mosquitto" / "mosquitto.log",
    )
    broker = started[0]
    say(
        f"broker identities (publisher, collector, operator, one per agent) in "
        f"{broker.identities}; agents connect over TLS (test CA {broker.ca_file})"
    )
    return broker


def start_ntp_servers(procs: Processes, rundir: Path) -> dict[str, tuple[str, int]]:
    servers: dict[str, tuple[str, int]] = {}
    for name, fake in (("GOOD_A", None), ("GOOD_B", None), ("SKEWED", SKEW_S)):
        sdir = rundir / f"ntp-{name.lower().replace('_', '-')}"
        what = f"chronyd NTP server {name.lower().replace('_', '-')}" + (
            f" (libfaketime: clock {fake:+g} s)" if fake else ""
        )
        d = procs.daemon(
            what,
            functools.partial(
                devstack.start_chronyd_server, sdir, address=ADDRESSES[name], fake_offset_s=fake
            ),
            sdir / "chronyd.log",
        )
        servers[name] = (d.host, d.port)
    servers["SILENT"] = procs.silent_udp(ADDRESSES["SILENT"])
    return servers


def make_key(procs: Processes, rundir: Path) -> tuple[Path, Path]:
    keys = rundir / "keys"
    procs.run("keygen", ["keygen", "--out", str(keys), "--key-id", KEY_ID])
    key, pub = keys / f"{KEY_ID}.key", keys / f"{KEY_ID}.pub"
    if not key.exists() or not pub.exists():
        raise StepFailed(f"clockfleet keygen did not write {key} and {pub}")
    say(f"created the signing key {key} (agents trust {pub})")
    return key, pub


def publish(procs: Processes, stack: Stack, template: Path, step: str) -> None:
    stack.fleet_file.write_text(render(template, stack.servers))
    # Keep each rendered version for the curious: diff fleet.before.yaml fleet.after.yaml
    (stack.rundir / f"fleet.{step}.yaml").write_text(stack.fleet_file.read_text())
    out = procs.run(
        f"publish-{step}",
        [
            "publish",
            "--config",
            str(stack.fleet_file),
            "--signing-key",
            str(stack.signing_key),
            # The demo's list holds a silent server on purpose (agents show it as a timeout):
            # the preflight prints it failing, and the demo publishes anyway.
            "--force",
            *stack.as_("publisher"),
        ],
    )
    say(f"published {template.relative_to(REPO)} (rendered as {stack.fleet_file}):")
    for line in out.strip().splitlines():
        print(f"    {line}", flush=True)


def start_collector(procs: Processes, stack_rundir: Path, conn: list[str]) -> str:
    port = devstack.free_port()
    child = procs.start("collector", ["collector", "--listen", f"127.0.0.1:{port}", *conn])
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not child.alive():
            break
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return url
        time.sleep(0.1)
    raise StepFailed(f"the collector did not serve {url}\n  log {child.log}:\n{tail(child.log)}")


def start_agents(procs: Processes, stack: Stack) -> None:
    for a in stack.agents:
        adir = agent_dir(stack, a)
        procs.start(
            f"agent-{a.id}",
            [
                "agent",
                "--id",
                a.id,
                "--region",
                a.region,
                "--backend",
                "observe",
                "--state-dir",
                str(adir / "state"),
                "--tz-root",
                str(adir / "tz-root"),
                "--trust-key",
                str(stack.trust_key),
                "--startup-delay",
                "1",
                *stack.as_(a.id, tls=True),
            ],
        )


def start(procs: Processes, settings: Settings) -> Stack:
    rundir = settings.rundir
    agents = demo_agents(BEFORE)
    broker = start_broker(procs, rundir, agents)
    servers = start_ntp_servers(procs, rundir)
    key, pub = make_key(procs, rundir)
    stack = Stack(
        rundir=rundir,
        broker=broker,
        signing_key=key,
        trust_key=pub,
        fleet_file=rundir / "fleet.yaml",
        collector_url="",
        prometheus_url="",
        servers=servers,
        agents=agents,
    )
    publish(procs, stack, BEFORE, "before")
    stack.collector_url = start_collector(procs, rundir, stack.as_("collector"))
    stack.prometheus_url = start_prometheus(procs, rundir, stack.collector_url)
    start_agents(procs, stack)
    return stack


def agent_dir(stack: Stack, agent: DemoAgent) -> Path:
    return stack.rundir / "agents" / agent.id
