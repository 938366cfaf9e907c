"""A 3-node NATS cluster with JetStream-backed MQTT on loopback, for tests and benchmarks.

Every node is rendered from the production template `broker/nats/node.conf.template` with
free loopback ports and a run directory, and started as a child process (`nats-server`, the
Debian package; measured with 2.9.10, broker/nats/README.md). Clients get all three nodes'
MQTT URLs as one comma-separated list and rotate through them, as in production.

The security configuration is the shipped one: identities written by
broker/clockfleet-identities, and security.conf generated from them by
broker/nats/make-security-conf (users, bcrypt hashes, the permissions broker/acl gives each
role), the same file on every node. An anonymous cluster needs a reason (`open_why=`).

    cluster = start_cluster(rundir, agents=["acme-01"])   # a Topology (topologies.py)
    cluster.settings("publisher")            # ConnectionSettings: all nodes, that identity
    cluster.login("operator")                # the same as command-line flags
    cluster.add("acme-02")                   # identities, security.conf, SIGHUP every node
    cluster.revoke("acme-02")                # the same, back once no node takes it
    cluster.node_of("clockfleet-agent-x")    # index of the node that MQTT client is on
    cluster.kill(i); cluster.restart(i)      # SIGKILL one node; start it again, data kept
    cluster.stop()

Ready means: every node's /healthz says ok, and an MQTT CONNECT (as `operator`) plus a QoS 1
SUBSCRIBE has succeeded on every node (the first CONNECT creates the $MQTT_* streams, and
right after a start or a restart a node can time out a CONNECT or refuse a SUBSCRIBE for a
few seconds, as measured on 2.9.10), so the tests measure clockfleet, not the
cluster's warm-up. A node (its config, process and readiness probe) is nats_node.py's.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from clockfleet import devstack
from clockfleet.devstack import LOOPBACK, DaemonError, stable_ports
from clockfleet.devstack.mosquitto import (
    ROLES,
    identities_tool,
    login_accepted,
    provision,
    record,
)
from clockfleet.devstack.nats_node import NatsNode, launch, render_conf, wait_ready
from clockfleet.protocol.connection import ConnectionSettings, settings_from_args

REPO = Path(__file__).resolve().parents[3]
SECURITY_TOOL = REPO / "broker" / "nats" / "make-security-conf"
# Who the readiness probe logs in as: the operator may read under the prefix, at QoS 1.
PROBE_IDENTITY = "operator"


def write_security(
    identities: Path, out: Path, *, prefix: str = "clock/v1", timeout: float = 120.0
) -> Path:
    """broker/nats/make-security-conf --identities DIR --out FILE, with this interpreter
    (the one that has bcrypt), as an operator runs it."""
    command = [sys.executable, str(SECURITY_TOOL), "--identities", str(identities)]
    result = subprocess.run(
        [*command, "--out", str(out), "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise DaemonError(f"make-security-conf failed: {result.stderr.strip()}")
    return out


@dataclass
class NatsCluster:
    nodes: list[NatsNode]
    rundir: Path
    # None: an anonymous cluster (start_cluster(open_why=...)).
    identities: Path | None = None
    known: set[str] = field(default_factory=set)
    name: str = "nats"
    kills: list[tuple[int, float]] = field(default_factory=list)

    # --- Topology ---------------------------------------------------------------------------

    @property
    def urls(self) -> str:
        return ",".join(n.url for n in self.nodes)

    @property
    def shipped(self) -> bool:
        return self.identities is not None

    def password_file(self, identity: str) -> Path:
        """The identity's password file (an agent is provisioned on first use)."""
        if self.identities is None:
            raise DaemonError("an anonymous cluster has no identities")
        self.add(identity)
        return self.identities / f"{identity}.password"

    def password(self, identity: str) -> str:
        return self.password_file(identity).read_text().strip()

    def settings(self, identity: str, *, agent: int | None = None) -> ConnectionSettings:
        """How a program logs in as `identity`: every node, to rotate through (agent number
        `agent` gets the same list: a cluster has no edges)."""
        return settings_from_args(
            argparse.Namespace(
                broker=self.urls,
                username=identity if self.shipped else None,
                password_file=str(self.password_file(identity)) if self.shipped else None,
                ca_file=None,
            )
        )

    def login(self, identity: str) -> list[str]:
        """Command-line flags for a clockfleet command as `identity`."""
        if not self.shipped:
            return ["--broker", self.urls]
        return [
            "--broker", self.urls, "--username", identity,
            "--password-file", str(self.password_file(identity)),
        ]  # fmt: skip

    def add(self, *agents: str) -> None:
        """Provision the agents not yet known, regenerate security.conf, reload every live
        node (SIGHUP) and wait until each of them takes the first new identity: what an
        operator does to add hosts. A node that is down reads the file when it starts."""
        if self.identities is None:
            return
        new = [a for a in dict.fromkeys(agents) if a not in self.known and a not in ROLES]
        if not new:
            return
        provision(self.identities, new, nats=True)
        self.known.update(new)
        self._install_security()
        live = [n for n in self.nodes if n.alive()]
        for n in live:
            n.daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        password = (self.identities / f"{new[0]}.password").read_text().strip()
        deadline = time.monotonic() + 20
        for n in live:
            # The login uses the identity's own name as client id: nobody else uses it yet.
            while not login_accepted(LOOPBACK, n.mqtt_port, new[0], password, timeout=5.0):
                if time.monotonic() > deadline:
                    raise DaemonError(
                        f"nats {n.name} did not take identity {new[0]} after SIGHUP:\n"
                        f"{n.log_tail()}"
                    )
                time.sleep(0.05)

    def _install_security(self) -> None:
        """security.conf from the identities, the same file into every node's directory."""
        assert self.identities is not None
        made = write_security(self.identities, self.rundir / "security.conf")
        for n in self.nodes:
            tmp = n.dir / ".security.conf.new"
            shutil.copyfile(made, tmp)
            tmp.replace(n.dir / "security.conf")  # a reloading node never reads half a file

    def revoke(self, *agents: str) -> None:
        """What an operator does to take hosts out: clockfleet-identities --revoke, the same
        security.conf on every node, SIGHUP every live node; back once no node takes any of
        these identities. Each node then goes on checking its connected clients against the
        new users and disconnects the revoked ones (1.6 ms per client at bcrypt cost 4)."""
        if self.identities is None:
            return
        secrets = {a: self.password(a) for a in agents}
        revoked = [arg for a in agents for arg in ("--revoke", a)]
        identities_tool(self.identities, *revoked, "--yes")
        self.known.difference_update(agents)
        self._install_security()
        live = [n for n in self.nodes if n.alive()]
        for n in live:
            n.daemon.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        deadline = time.monotonic() + 20
        for n in live:
            for agent, secret in secrets.items():
                # Refused from now on; a login the old file still took would hold the session
                # for an instant only (the identity's own client id: nobody else uses it).
                while login_accepted(LOOPBACK, n.mqtt_port, agent, secret, timeout=5.0):
                    if time.monotonic() > deadline:
                        raise DaemonError(f"nats {n.name} still takes {agent}:\n{n.log_tail()}")
                    time.sleep(0.05)

    def wait_ready(self, nodes: list[NatsNode], timeout: float) -> None:
        """Every node in `nodes` healthy and serving MQTT (the probe logs in as the operator)."""
        if self.shipped:
            wait_ready(nodes, timeout, PROBE_IDENTITY, self.password(PROBE_IDENTITY))
        else:
            wait_ready(nodes, timeout, None, None)

    def stop(self) -> None:
        for n in self.nodes:
            if n.daemon is not None:
                n.daemon.stop(timeout=10.0)

    # --- faults -----------------------------------------------------------------------------

    def kill(self, index: int) -> float:
        """SIGKILL node `index` (a crash: no lame duck, no flush); its monotonic time."""
        node = self.nodes[index]
        if node.daemon is None:
            raise DaemonError(f"{node.name} was never started")
        node.daemon.kill()
        t = time.monotonic()
        self.kills.append((index, t))
        return t

    def restart(self, index: int, timeout: float = 30.0) -> None:
        """Start node `index` again with its data; return once it is healthy and serves MQTT."""
        node = self.nodes[index]
        if node.alive():
            raise DaemonError(f"{node.name} is still running")
        launch(node)
        self.wait_ready([node], timeout)

    # --- where clients are ------------------------------------------------------------------

    def clients_by_node(self) -> dict[int, list[str]]:
        """MQTT client ids per live node index."""
        return {n.index: n.mqtt_clients() for n in self.nodes if n.alive()}

    def node_of(self, client_id: str) -> int | None:
        for i, ids in self.clients_by_node().items():
            if client_id in ids:
                return i
        return None

    def busiest(self, client_ids: set[str]) -> tuple[int, int]:
        """The live node most of `client_ids` are connected to, and how many are there."""
        counts = Counter(
            {i: len(client_ids.intersection(ids)) for i, ids in self.clients_by_node().items()}
        )
        (index, n), *_ = counts.most_common(1)
        return index, n

    def describe(self) -> str:
        return "; ".join(
            f"{n.name}: mqtt {n.mqtt_port} http {n.http_port} {'up' if n.alive() else 'down'}"
            for n in self.nodes
        )

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.log_tail(lines)}" for n in self.nodes)


def start_cluster(
    rundir: Path,
    *,
    agents: list[str] | tuple[str, ...] = (),
    nodes: int = 3,
    timeout: float = 60.0,
    open_why: str = "",
) -> NatsCluster:
    """Start the cluster under rundir on free loopback ports; return once every node serves.

    By default every node runs the shipped security configuration: identities for the roles
    and `agents` (more on first use, or with add()), security.conf generated from them.
    open_why: start it anonymous instead, recorded with this reason for the test census."""
    devstack.require("nats-server")
    rundir.mkdir(parents=True, exist_ok=True)
    record("nats", shipped=not open_why, why=open_why)
    members = []
    taken: set[int] = set()
    for i in range(nodes):
        d = rundir / f"nats-{i}"
        d.mkdir(parents=True, exist_ok=True)
        ports = stable_ports(4, taken)
        members.append(NatsNode(i, f"n{i}", *ports, dir=d, conf=d / "nats.conf"))
    routes = [n.cluster_port for n in members]
    ids = None if open_why else provision(rundir / "ids", list(agents), nats=True)
    cluster = NatsCluster(members, rundir, ids, set(agents))
    for n in members:
        n.conf.write_text(render_conf(n, routes))
        (n.dir / "mqtt-tls.conf").write_text("# loopback test cluster: no TLS\n")
    if open_why:
        for n in members:
            (n.dir / "security.conf").write_text(f"# anonymous on purpose: {open_why}\n")
    else:
        cluster._install_security()
    try:
        for n in members:
            launch(n)
        cluster.wait_ready(members, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
