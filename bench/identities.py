"""Figure: broker identities at fleet scale, on the shipped Mosquitto (broker/mosquitto.conf).

- provisioning: broker/clockfleet-identities writing N new agent identities (their hashes and
  their secrets), against `mosquitto_passwd -U` hashing the same N clear lines (what the
  previous tool ran, with Mosquitto's default 101 PBKDF2 rounds);
- the same N added to a running broker and in force: the tool, SIGHUP (--reload-pidfile) and
  --confirm, against the dynamic security plugin creating the same N clients over its
  control topic (each command saves its whole configuration file);
- revocation with N agents connected: from the tool's start to the revoked agent's socket
  closed by the broker, and the broker's longest round trip meanwhile (Mosquitto checks
  every connected client against the file it reloads), against the same with the 101-round
  hashes of mosquitto_passwd;
- NATS: the same N with --nats (a bcrypt hash each, cost 4);
- client certificates, the other alternative: N key pairs and certificates, and what a CRL
  does to a connected agent (bench/identity_certs.py).
"""

from __future__ import annotations

import argparse
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import identity_certs
from bench import identity_load as load
from bench.results import figure, row
from bench.stack import Bench, timed_run
from clockfleet import devstack
from clockfleet.devstack.mosquitto import IDENTITIES_TOOL, ROLES, ShippedBroker

KEY = "identities"
HELP = (
    "identities: N provisioned (tool, and in force on a running broker) vs mosquitto_passwd "
    "and the dynamic security plugin; revocation and the broker's stall with N connected"
)
PING_TOPIC = "clock/v1/agents/bench-ping/cmd"  # the operator writes and reads it


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=3000, help="identities to provision (default 3000)")
    p.add_argument(
        "--connected", type=int, default=3000, help="agents connected during a revocation"
    )
    p.add_argument("--no-dynsec", action="store_true", help="skip the dynamic security run")


def agent_ids(n: int, tag: str) -> list[str]:
    return [f"bench-{tag}-{i:05d}" for i in range(n)]


def tool(*args: str, timeout: float = 600.0) -> tuple[float, str]:
    seconds, out, code = timed_run([sys.executable, str(IDENTITIES_TOOL), *args], timeout)
    if code != 0:
        raise RuntimeError(f"clockfleet-identities {' '.join(args[:4])}...: {out[-500:]}")
    return seconds, out


def provisioning(b: Bench, n: int) -> tuple[float, float, float]:
    """(the tool for n agents, mosquitto_passwd -U for the same n + roles, the tool --nats)."""
    ids = agent_ids(n, "p")
    agents_file = b.subdir("inventory") / "agents.txt"
    agents_file.write_text("".join(a + "\n" for a in ids))
    ours, _ = tool("--out", str(b.subdir("ids")), "--agents-file", str(agents_file))
    nats, _ = tool("--out", str(b.subdir("ids-nats")), "--agents-file", str(agents_file), "--nats")
    clear = b.subdir("passwd") / "passwd"
    names = [*ROLES, *ids]
    clear.write_text("".join(f"{a}:{secrets.token_urlsafe(24)}\n" for a in names))
    reference, out, code = timed_run(["mosquitto_passwd", "-U", str(clear)], 600)
    if code != 0:
        raise RuntimeError(f"mosquitto_passwd -U: {out}")
    return ours, reference, nats


def pidfile(broker: ShippedBroker) -> Path:
    path = broker.rundir / "mosquitto.pid"
    path.write_text(f"{broker.daemon.proc.pid}\n")
    return path


def live_add(b: Bench, n: int) -> float:
    """n agents added to a running shipped broker: the tool until --confirm says in force."""
    broker = devstack.start_shipped_mosquitto(b.subdir("live"))
    b.callback(broker.stop)
    agents_file = broker.rundir / "agents.txt"
    ids = agent_ids(n, "l")
    agents_file.write_text("".join(a + "\n" for a in ids))
    seconds, _ = tool(
        "--out", str(broker.identities), "--agents-file", str(agents_file),
        "--reload-pidfile", str(pidfile(broker)), "--confirm", broker.url,
    )  # fmt: skip
    load.login(broker.port, ids[-1], broker.password(ids[-1])).close()  # in force, no retry
    return seconds


def dynsec_add(b: Bench, n: int, per: int = 100) -> float:
    rundir = b.subdir("dynsec")
    admin = secrets.token_urlsafe(24)
    load.dynsec_config(rundir / "dynamic-security.json", admin)
    d = devstack.start_open_mosquitto(
        rundir,
        why="benchmark: the dynamic security plugin, the alternative the identities figure "
        "compares the shipped password file with",
        conf_template=load.DYNSEC_CONF,
        values={"PLUGIN": load.DYNSEC_PLUGIN},
    )
    b.callback(d.stop)
    creds = [(a, secrets.token_urlsafe(24)) for a in agent_ids(n, "d")]
    return load.dynsec_create(d.port, admin, creds, per)


def to_101_rounds(broker: ShippedBroker, names: list[str]) -> None:
    """The broker's password file as mosquitto_passwd writes it (101 PBKDF2 rounds), from the
    secrets the tool handed out; the broker is not running yet."""
    passwd = broker.identities / "passwd"
    passwd.write_text("".join(f"{a}:{broker.password(a)}\n" for a in names))
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, timeout=600)


def revocation(b: Bench, connected: int, rounds: int) -> tuple[float, float, int]:
    """(ms from the tool's start to the revoked socket's close, longest round trip in ms
    during it, round trips timed) with `connected` agents logged in."""
    ids = agent_ids(connected, f"r{rounds}")
    broker = devstack.start_shipped_mosquitto(b.subdir(f"revoke-{rounds}"), ids)
    b.callback(broker.stop)
    if rounds != 1:
        broker.stop()
        to_101_rounds(broker, [*ROLES, *ids])
        broker.restart()
    pinger = load.Pinger(broker.port, "operator", broker.password("operator"), PING_TOPIC)
    socks = load.connect_many(broker.port, [(a, broker.password(a)) for a in ids])
    try:
        pinger.start()
        time.sleep(0.5)  # a baseline of round trips before the change
        victim = socks[len(socks) // 2]
        t0 = time.monotonic()
        tool(
            "--out", str(broker.identities), "--revoke", ids[len(ids) // 2], "--yes",
            "--reload-pidfile", str(pidfile(broker)), "--confirm", broker.url,
        )  # fmt: skip
        closed = load.wait_closed(victim, 10.0)
        time.sleep(0.5)  # round trips after the reload, for the maximum's sake
        rtts = pinger.stop()
    finally:
        for sock in socks:  # now: the next run needs the descriptors
            sock.close()
        broker.stop()
    if closed is None:
        raise RuntimeError("the revoked agent's connection was not closed within 10 s")
    return (closed - t0) * 1000, max(rtts) * 1000, len(rtts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with Bench(KEY) as b:
        ours, passwd_ref, nats = provisioning(b, args.n)
        live = live_add(b, args.n)
        dynsec = None if args.no_dynsec else dynsec_add(b, args.n)
        revoke_ms, stall_ms, pings = revocation(b, args.connected, 1)
        revoke_101_ms, stall_101_ms, pings_101 = revocation(b, args.connected, 101)
        certs_s = identity_certs.issue_many(args.n)
        crl_closed, crl_refused = identity_certs.crl_revocation(b.subdir("certs"))
    n, c = args.n, args.connected
    dynsec_ref = f"dynamic security plugin: {n} createClient over $CONTROL, 100 a message"
    rows = [
        row(
            f"clockfleet-identities: {n} new agent identities (hashes and secrets written)",
            "s",
            ours,
            goal=20.0,
            reference=f"mosquitto_passwd -U of the same {n + 4} clear lines (101 rounds)",
            reference_value=passwd_ref,
        ),
        row(
            f"{n} agents added to the running shipped broker, in force (tool, SIGHUP, --confirm)",
            "s",
            live,
            goal=20.0,
            reference=None if dynsec is None else dynsec_ref,
            reference_value=dynsec,
        ),
        row(
            f"revocation with {c} agents connected: tool started -> the agent's connection closed",
            "ms",
            revoke_ms,
            goal=5000.0,
            reference="the same, password file at 101 rounds (mosquitto_passwd's default)",
            reference_value=revoke_101_ms,
        ),
        row(
            f"the broker's longest round trip during that reload ({c} connected)",
            "ms",
            stall_ms,
            goal=500.0,
            reference="the same, password file at 101 rounds",
            reference_value=stall_101_ms,
        ),
        row(f"clockfleet-identities --nats: {n} new identities (bcrypt cost 4 too)", "s", nats),
        row(f"client certificates: {n} key pairs and certificates (P-256)", "s", certs_s),
    ]
    return figure(
        KEY,
        "Identities",
        command="",
        rows=rows,
        method=[
            "provisioning: a fresh directory, the agents in one --agents-file; whole process "
            "wall time; the reference hashes the same number of clear user:secret lines with "
            "mosquitto_passwd -U (Debian's mosquitto 2.0.11)",
            "in force: the shipped broker running, the tool with --reload-pidfile and --confirm "
            "(a throw-away identity's login taken); then the last agent logs in once. The "
            "dynamic security run: Mosquitto with mosquitto_dynamic_security.so and an admin "
            "client, createClient commands 100 to a message, timed to the last response",
            f"revocation: {c} agents logged in on bare sockets, an operator publishing to a "
            "topic it reads back to back (one round trip at a time); the tool revokes one with "
            "--reload-pidfile and --confirm; time to that socket's close, longest round trip",
        ],
        notes=[
            f"round trips timed during the revocation: {pings} (1 round), {pings_101} (101 rounds)",
            "Mosquitto checks every connected client's password again on each reload (and "
            "Debian's logrotate reloads it daily): at 101 rounds that stops all traffic for "
            "the whole check; the tool's 1-round hashes make it short (docs/decisions.md)",
            "client certificates: a connected agent whose certificate a new CRL revokes (crlfile, "
            f"SIGHUP) is {'disconnected' if crl_closed else 'NOT disconnected'} within 5 s; its "
            f"next login is {'refused' if crl_refused else 'NOT refused'}",
        ],
    )
