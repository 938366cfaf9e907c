"""Real daemons on loopback for the tests, `make demo` and the benchmarks (never installed).

    daemons.py     child processes: chronyd as an NTP server (-x), Prometheus, free ports
    mosquitto.py   Mosquitto from the shipped configuration (identities, ACL, TLS); an open
                   one only with a reason
    nats.py        a 3-node NATS cluster from broker/nats/
    bridges.py     central and edge Mosquittos, bridged as broker/bridges/make-bridges writes
    topologies.py  those three behind one interface, for the end-to-end tests and benchmarks

`from clockfleet import devstack` gives the daemons' helpers directly (devstack.Daemon,
devstack.start_chronyd_server, ...) and Mosquitto as devstack.start_shipped_mosquitto and
devstack.start_open_mosquitto.
"""

from clockfleet.devstack.daemons import (
    LOOPBACK,
    Daemon,
    DaemonError,
    free_port,
    free_udp_port,
    is_root,
    libfaketime_path,
    ntp_query,
    render,
    require,
    restart,
    silent_udp,
    stable_ports,
    start_chronyd_server,
    start_prometheus,
    wait_tcp,
)
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.devstack.mosquitto import start_open as start_open_mosquitto
from clockfleet.devstack.mosquitto import start_shipped as start_shipped_mosquitto

__all__ = [
    "LOOPBACK",
    "Daemon",
    "DaemonError",
    "ShippedBroker",
    "free_port",
    "free_udp_port",
    "is_root",
    "libfaketime_path",
    "ntp_query",
    "render",
    "require",
    "restart",
    "silent_udp",
    "stable_ports",
    "start_chronyd_server",
    "start_open_mosquitto",
    "start_prometheus",
    "start_shipped_mosquitto",
    "wait_tcp",
]
