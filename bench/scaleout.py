"""Figure: scale-out on a 3-node NATS cluster (JetStream-backed MQTT), beside Mosquitto.

Work in progress: the measurements land in the next commits.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.results import figure

KEY = "scaleout"
HELP = "NATS 3-node cluster: convergence p100 beside Mosquitto, all back after a node SIGKILL"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1000, help="fleet size (1000)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    return figure(KEY, "Scale-out (NATS cluster)", command="", rows=[], method=[], notes=[])
