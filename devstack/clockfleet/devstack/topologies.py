"""Broker topologies on loopback, for the end-to-end tests and the benchmarks.

Every topology runs its shipped configuration (identities, ACL or permissions) and answers
the same questions, so one test runs unchanged on each:

    topology.settings("publisher")          how a program logs in as that identity
    topology.settings("pbx-01", agent=i)    how agent number i logs in (its edge, or the
                                            cluster's nodes)
    topology.login("operator")              the same as command-line flags (the centre)
    topology.add("pbx-01", ...)             provision agent identities (no restart)
    topology.stop()

Topologies:
- `mosquitto`: one Mosquitto from broker/mosquitto.conf (the default deployment).
- `nats`: a 3-node NATS cluster with JetStream-backed MQTT (nats.py), every client given all
  three nodes to rotate through.
- `bridges`: a central Mosquitto and two edges bridged to it (bridges.py); agents alternate
  between the edges, publisher and collector stay central.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from clockfleet.devstack.mosquitto import ShippedBroker, start_shipped
from clockfleet.protocol.connection import ConnectionSettings


class Topology(Protocol):
    name: str

    def settings(self, identity: str, *, agent: Optional[int] = None) -> ConnectionSettings: ...

    def login(self, identity: str) -> list[str]: ...

    def add(self, *agents: str) -> None: ...

    def stop(self) -> None: ...


@dataclass
class SingleMosquitto:
    broker: ShippedBroker
    name: str = "mosquitto"

    def settings(self, identity: str, *, agent: Optional[int] = None) -> ConnectionSettings:
        return self.broker.settings(identity)

    def login(self, identity: str) -> list[str]:
        return self.broker.login(identity)

    def add(self, *agents: str) -> None:
        self.broker.add(*agents)

    def stop(self) -> None:
        self.broker.stop()


def start_single(rundir: Path) -> SingleMosquitto:
    return SingleMosquitto(start_shipped(rundir / "mosquitto"))


def _start_nats(rundir: Path) -> Topology:
    from clockfleet.devstack import nats

    return nats.start_cluster(rundir)


def _start_bridges(rundir: Path) -> Topology:
    from clockfleet.devstack import bridges

    return bridges.start_central_and_edges(rundir, edges=2)


STARTERS: dict[str, Callable[[Path], Topology]] = {
    "mosquitto": start_single,
    "nats": _start_nats,
    "bridges": _start_bridges,
}


def start(name: str, rundir: Path) -> Topology:
    """Start the named topology under `rundir` (loopback only)."""
    return STARTERS[name](rundir)
