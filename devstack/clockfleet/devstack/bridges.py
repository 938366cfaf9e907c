"""A central Mosquitto and one edge Mosquitto per data centre, bridged, on loopback: what an
operator gets from broker/bridges/make-bridges and broker/clockfleet-identities.

    topo = start_central_and_edges(rundir, edges=2, agents=["pbx-01"])
    topo.settings("publisher")            # central, plain loopback listener
    topo.settings("pbx-01", agent=0)      # agent 0 on edge dc1 (i % edges), TLS
    topo.edge(1).settings("pbx-02")       # an agent of edge dc2
    topo.login("operator")                # flags for `clockfleet ...` on central
    topo.add("pbx-03")                    # on central and every edge, SIGHUP, no restart
    topo.cut(0); topo.restore(0)          # the link of dc1 (both brokers keep running)
    topo.wait_bridges(up=False, only=[0]) # as central's operator sees it

How it is built, as the operator's steps in docs/bridges.md:
1. `make-bridges --names` names the bridge identities;
2. `clockfleet-identities` writes central's password file: the roles, the agents, the bridges;
3. `make-bridges --out ... --bridge-ca CA` writes central.conf, central.acl, edge.acl and one
   edge-DC.conf per data centre (the script runs, nothing is re-assembled here);
4. each edge's own `clockfleet-identities` directory holds its agents.
The generated configs run with only their ports and paths replaced (bridge_configs.py).
Central runs TLS for the bridges and keeps the shipped plain loopback listener for the
publisher, collector and operator, which run on its host here; edges (bridge_edge.py) have
only the TLS listener the generator writes, so agents use TLS.

Each edge reaches central's TLS listener through its own LinkProxy (bridge_link.py), a small
TCP relay that can cut the link (drop the connection and refuse new ones) and restore it while
both brokers run; central's operator reads the bridges' states (bridge_states.py).
Every broker start is recorded (mosquitto.record, kind "bridges"); a start that leaves out an
ACL line is not the shipped configuration and must say why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from clockfleet.devstack.bridge_configs import (
    central_template,
    dc_name,
    generator,
    run_generator,
    without_lines,
)
from clockfleet.devstack.bridge_edge import Edge, start_edge
from clockfleet.devstack.bridge_link import LinkProxy
from clockfleet.devstack.bridge_states import WATCHER, watch_bridges
from clockfleet.devstack.daemons import LOOPBACK, DaemonError, stable_ports
from clockfleet.devstack.mosquitto import ShippedBroker, launch, make_test_ca, provision, record
from clockfleet.protocol.connection import ConnectionSettings

# Callers (tests, bench/bridges.py) reach these through this module.
__all__ = [
    "PREFIX",
    "CentralAndEdges",
    "Edge",
    "LinkProxy",
    "generator",
    "start_central_and_edges",
    "watch_bridges",
]

PREFIX = "clock/v1"


# --- The topology ----------------------------------------------------------------------------


@dataclass
class CentralAndEdges:
    """topologies.Topology: publisher, collector and operator on central; agent i on edge
    i % edges."""

    rundir: Path
    central: ShippedBroker
    edges: list[Edge]
    proxies: list[LinkProxy]
    name: str = "bridges"
    stopped: bool = field(default=False, repr=False)

    @property
    def dcs(self) -> list[str]:
        return [e.dc for e in self.edges]

    def edge_of(self, i: int) -> int:
        return i % len(self.edges)

    def edge(self, k: int) -> Edge:
        return self.edges[k]

    def settings(self, identity: str, *, agent: Optional[int] = None) -> ConnectionSettings:
        """Agent number `agent` logs in on its edge; everything else on central."""
        if agent is None:
            return self.central.settings(identity)
        return self.edges[self.edge_of(agent)].settings(identity)

    def login(self, identity: str) -> list[str]:
        return self.central.login(identity)

    def add(self, *agents: str) -> None:
        """On central (whose password file holds every agent, docs/bridges.md) and on every
        edge: which edge an agent uses is decided when it connects (settings(agent=i)), and
        one reload per broker keeps adding many agents cheap."""
        self.central.add(*agents)
        for e in self.edges:
            e.add(*agents)

    # Cuts: the link only (both brokers run), or central itself.
    def cut(self, k: int) -> None:
        self.proxies[k].cut()

    def restore(self, k: int) -> None:
        self.proxies[k].restore()

    def kill_central(self) -> None:
        self.central.kill()

    def restart_central(self) -> None:
        self.central.restart()

    def states(self, timeout_s: float = 2.0) -> dict[str, str]:
        """DC -> "1"/"0" as central's operator sees it. The values are retained: after a
        SIGKILLed central restarts they show the persisted state until each bridge returns."""
        return watch_bridges(
            self.central.settings(WATCHER), lambda s: set(self.dcs) <= set(s), timeout_s
        )

    def wait_bridges(
        self, up: bool = True, timeout_s: float = 60.0, only: Sequence[int] | None = None
    ) -> None:
        """Until central shows these bridges (indices; default all) up or down. Central must
        be running: a dead central shows nothing."""
        want = "1" if up else "0"
        names = [self.dcs[k] for k in (only if only is not None else range(len(self.edges)))]
        states = watch_bridges(
            self.central.settings(WATCHER),
            lambda s: all(s.get(n) == want for n in names),
            timeout_s,
        )
        if not all(states.get(n) == want for n in names):
            raise DaemonError(f"bridges {names} not {'up' if up else 'down'}: {states}")

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        for e in self.edges:
            e.stop()
        for p in self.proxies:
            p.close()
        self.central.stop()


def start_central(
    rundir: Path,
    dcs: Sequence[str],
    agents: Sequence[str],
    without_acl_lines: Sequence[str],
    why: str,
) -> tuple[ShippedBroker, Path]:
    """Central as make-bridges generates it for these data centres (into rundir/generated,
    which the edges' configs come from too): (central, the generated directory)."""
    dc_args = [a for dc in dcs for a in ("--dc", dc)]
    bridges = run_generator("--names", *dc_args).split()
    central_dir = rundir / "central"
    ids = provision(central_dir / "ids", [*agents, *bridges])
    certs = make_test_ca(rundir / "ca")
    tls_port, plain_port = stable_ports(2)
    generated = rundir / "generated"
    # --bridge-ca is the generator's own option (TLS is its default, --plain is for loopback
    # only): the edges verify central against the test CA as they would against a real one.
    address = f"{LOOPBACK}:{tls_port}"
    run_generator("--out", generated, "--central", address, "--identities", ids,
                  "--bridge-ca", certs / "ca.crt", *dc_args)  # fmt: skip
    acl = generated / "central.acl"
    if without_acl_lines:
        acl = central_dir / "central.acl"
        acl.write_text(without_lines((generated / "central.acl").read_text(), without_acl_lines))
    record("bridges", shipped=not without_acl_lines, why=why)
    daemon = launch(
        central_dir / "mosquitto",
        central_template(generated, ids, certs, tls_port, acl),
        port=plain_port,
    )
    central = ShippedBroker(daemon, central_dir, ids, certs, tls_port, {*agents, *bridges})
    return central, generated


def start_central_and_edges(
    rundir: Path,
    edges: int = 2,
    *,
    agents: Sequence[str] = (),
    without_acl_lines: Sequence[str] = (),
    why: str = "",
    before_edges: Callable[[ShippedBroker], None] | None = None,
    timeout_s: float = 30.0,
) -> CentralAndEdges:
    """Central and `edges` edges (dc1, dc2, ...) as generated, each bridged over TLS through
    its own LinkProxy; `agents` provisioned on central and every edge. Returns once central's
    operator sees every bridge up.

    without_acl_lines: whole lines to leave out of the generated central.acl, which makes
    central no longer the shipped configuration: `why` must say why. before_edges(central):
    runs before any edge starts (to fill central first)."""
    rundir.mkdir(parents=True, exist_ok=True)
    dcs = [dc_name(k) for k in range(edges)]
    central, generated = start_central(rundir, dcs, agents, without_acl_lines, why)
    central_address = f"{LOOPBACK}:{central.tls_port}"
    topo = CentralAndEdges(rundir, central, [], [])
    try:
        if before_edges is not None:
            before_edges(central)
        for dc in dcs:
            proxy = LinkProxy(LOOPBACK, central.tls_port)
            topo.proxies.append(proxy)
            edge_dir = rundir / f"edge-{dc}"
            topo.edges.append(
                start_edge(edge_dir, dc, generated, central.certs, central_address, proxy, agents)
            )
        topo.wait_bridges(up=True, timeout_s=timeout_s)
    except BaseException:
        topo.stop()
        raise
    return topo
