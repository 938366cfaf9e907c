"""A real `clockfleet agent` process against a bench broker: the command line both the
one-sync and the footprint figures run."""

from __future__ import annotations

import os
from pathlib import Path

from bench.stack import clockfleet_bin

REGION = "bench"
# What an agent cannot run without: the floor under its start-up time and memory.
DEPENDENCIES = "import paho.mqtt.client, msgspec, nacl.signing"


def agent_argv(
    agent_id: str, broker: str, trust: Path, state_dir: Path, config: Path, *, once: bool
) -> list[str]:
    """`clockfleet agent` with the observe backend, the bench's trust key, no time zone.

    An explicit (empty) config file, so a /etc/clockfleet/agent.yaml on the machine cannot
    change what is measured.
    """
    config.touch()
    argv = [
        clockfleet_bin(),
        "agent",
        *("--id", agent_id),
        *("--region", REGION),
        *("--backend", "observe"),
        "--no-timezone",
        *("--trust-key", str(trust)),
        *("--state-dir", str(state_dir)),
        *("--config", str(config)),
        *("--broker", broker),
        *("--log-level", "warning"),
    ]
    if once:
        argv.append("--once")
    else:
        argv += ["--startup-delay", "0"]
    return argv


def agent_env() -> dict[str, str]:
    """The environment an installed agent runs in: byte code cached.

    A shell with PYTHONDONTWRITEBYTECODE=1 would make every run compile clockfleet from
    source (about 40 ms here), which no installed agent does; the warm-up run writes the
    cache.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env
