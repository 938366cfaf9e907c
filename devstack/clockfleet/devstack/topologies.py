"""Broker topologies on loopback, for the end-to-end tests and the benchmarks.

Every topology answers the same four questions, so one test runs unchanged on each:

    topology.publisher_url   where the publisher connects (the centre)
    topology.collector_url   where the collector connects (the centre)
    topology.agent_url(i)    where agent number i connects (its edge, or the cluster's nodes)
    topology.stop()

Topologies:
- `mosquitto`: one Mosquitto (the default deployment).
- `nats`: a 3-node NATS cluster with JetStream-backed MQTT (nats.py), every client given all
  three nodes to rotate through.
- `bridges`: a central Mosquitto and two edges bridged to it (bridges.py); agents alternate
  between the edges, publisher and collector stay central.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from clockfleet import devstack


class Topology(Protocol):
    name: str
    publisher_url: str
    collector_url: str

    def agent_url(self, i: int) -> str: ...

    def stop(self) -> None: ...


@dataclass
class SingleMosquitto:
    daemon: devstack.Daemon
    name: str = "mosquitto"
    daemons: list[devstack.Daemon] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"mqtt://{self.daemon.host}:{self.daemon.port}"

    @property
    def publisher_url(self) -> str:
        return self.url

    @property
    def collector_url(self) -> str:
        return self.url

    def agent_url(self, i: int) -> str:
        return self.url

    def stop(self) -> None:
        self.daemon.stop()


def start_single(rundir: Path) -> SingleMosquitto:
    return SingleMosquitto(devstack.start_mosquitto(rundir / "mosquitto"))


def _start_nats(rundir: Path) -> Topology:
    from clockfleet import nats

    return nats.start_cluster(rundir)


def _start_bridges(rundir: Path) -> Topology:
    from clockfleet import bridges

    return bridges.start_central_and_edges(rundir, edges=2)


STARTERS: dict[str, Callable[[Path], Topology]] = {
    "mosquitto": start_single,
    "nats": _start_nats,
    "bridges": _start_bridges,
}


def start(name: str, rundir: Path) -> Topology:
    """Start the named topology under `rundir` (loopback only)."""
    return STARTERS[name](rundir)
