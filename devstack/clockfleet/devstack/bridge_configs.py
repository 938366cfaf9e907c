"""broker/bridges/make-bridges for the bridged topology: the generator run as an operator runs
it, and its generated configs with only their ports and paths replaced.

Each replaced line must occur exactly once (mosquitto_conf.replace_once), so a change to the
generator that this does not follow fails loudly instead of testing something else.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from clockfleet.devstack.daemons import DaemonError
from clockfleet.devstack.mosquitto import script_module
from clockfleet.devstack.mosquitto_conf import path_substitutions, production_template, replace_once

REPO = Path(__file__).resolve().parents[3]
MAKE_BRIDGES = REPO / "broker" / "bridges" / "make-bridges"


def generator() -> ModuleType:
    """broker/bridges/make-bridges as a module (it is a script without a .py suffix)."""
    return script_module(MAKE_BRIDGES, "clockfleet_make_bridges")


def run_generator(*args: str | Path) -> str:
    """broker/bridges/make-bridges ARGS, as an operator runs it; its standard output."""
    done = subprocess.run(
        [str(MAKE_BRIDGES), *map(str, args)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise DaemonError(f"make-bridges {' '.join(map(str, args))}: {done.stderr.strip()}")
    return done.stdout


def dc_name(k: int) -> str:
    return f"dc{k + 1}"


def central_template(generated: Path, ids: Path, certs: Path, tls_port: int, acl: Path) -> str:
    """make-bridges' central.conf (broker/mosquitto.conf with central's changes) with the
    substitutions production_template makes to broker/mosquitto.conf."""
    return production_template(
        ids / "passwd", certs, tls_port, acl, source=generated / "central.conf"
    )


def edge_template(
    generated: Path, dc: str, central: str, ids: Path, certs: Path, link: tuple[str, int]
) -> str:
    """make-bridges' edge-DC.conf with its listener's port, its files' paths, and the address
    of central replaced (this edge's link instead: one relay per edge, so one link can be cut
    while the others stay up)."""
    return replace_once(
        (generated / f"edge-{dc}.conf").read_text(),
        {
            "\nlistener 8883\n": "\nlistener @PORT@ @HOST@\n",
            **path_substitutions(ids / "passwd", certs, generated / "edge.acl", "edge.acl"),
            f"\naddress {central}\n": f"\naddress {link[0]}:{link[1]}\n",
        },
        f"make-bridges' edge-{dc}.conf",
    )


def without_lines(acl: str, lines: Sequence[str]) -> str:
    """The ACL without these whole lines (each must be there: a test that removes a line
    the generator no longer writes would show nothing)."""
    kept = acl.splitlines()
    for line in lines:
        if line not in kept:
            raise AssertionError(f"the generated central.acl has no line {line!r}")
        kept = [k for k in kept if k != line]
    return "\n".join(kept) + "\n"
