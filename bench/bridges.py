"""Figure: convergence through one edge-bridge hop (filled in below)."""

from __future__ import annotations

import argparse
from typing import Any

KEY = "bridges"
HELP = "new list -> every agent's report at the collector, N agents on one edge vs on central"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1000, help="fleet size (1000)")
    p.add_argument("--rounds", type=int, default=5, help="list updates per layout (5)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    raise NotImplementedError("bench/bridges.py: work in progress")
