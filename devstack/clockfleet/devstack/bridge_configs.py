"""broker/bridges/make-bridges for the bridged topology: the generator run as an operator runs
it, and its generated configs with only their ports and paths replaced.

Each replaced line must occur exactly once (`replace_once`), so a change to the generator that
this does not follow fails loudly instead of testing something else.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from types import ModuleType

from clockfleet.devstack.daemons import LOOPBACK, DaemonError

REPO = Path(__file__).resolve().parents[3]
MAKE_BRIDGES = REPO / "broker" / "bridges" / "make-bridges"


@cache
def generator() -> ModuleType:
    """broker/bridges/make-bridges as a module (it is a script without a .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("clockfleet_make_bridges", str(MAKE_BRIDGES))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


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


def replace_once(text: str, substitutions: dict[str, str], what: str) -> str:
    for old, new in substitutions.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"{what}: {old.strip()!r} occurs {count} times, not once")
        text = text.replace(old, new)
    return text


def file_substitutions(ids: Path, certs: Path, acl_name: str, acl: Path) -> dict[str, str]:
    """The lines naming files, alike in central.conf and every edge-DC.conf: the password
    file, the ACL (`acl_name` in /etc/mosquitto/clockfleet/), the TLS files, persistence and
    log."""
    return {
        "\npassword_file /etc/mosquitto/clockfleet/passwd\n": f"\npassword_file {ids}/passwd\n",
        f"\nacl_file /etc/mosquitto/clockfleet/{acl_name}\n": f"\nacl_file {acl}\n",
        "\ncafile /etc/mosquitto/certs/ca.crt\n": f"\ncafile {certs}/ca.crt\n",
        "\ncertfile /etc/mosquitto/certs/server.crt\n": f"\ncertfile {certs}/server.crt\n",
        "\nkeyfile /etc/mosquitto/certs/server.key\n": f"\nkeyfile {certs}/server.key\n",
        "\npersistence_location /var/lib/mosquitto/\n": "\npersistence_location @RUNDIR@/\n",
        "\nlog_dest file /var/log/mosquitto/mosquitto.log\n": (
            "\nlog_dest file @RUNDIR@/mosquitto.log\n"
        ),
    }


def central_template(generated: Path, ids: Path, certs: Path, tls_port: int, acl: Path) -> str:
    """make-bridges' central.conf with the substitutions mosquitto.production_template makes
    to broker/mosquitto.conf (central.conf is that file with central's changes): the TLS
    listener on `tls_port`, the plain loopback listener as @PORT@ for the launcher."""
    return replace_once(
        (generated / "central.conf").read_text(),
        {
            "\nlistener 8883\n": f"\nlistener {tls_port} {LOOPBACK}\n",
            "\nlistener 1883 127.0.0.1\n": "\nlistener @PORT@ @HOST@\n",
            **file_substitutions(ids, certs, "acl", acl),
        },
        "make-bridges' central.conf",
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
            **file_substitutions(ids, certs, "edge.acl", generated / "edge.acl"),
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
