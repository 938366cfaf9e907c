"""The reference NTP clients: chronyd -Q, ntpdig and ntplib, run as the measured floors ran them.

Those floors, and how they were taken: docs/decisions.md, "Measured floors on this machine".

Every offset here is server minus local (chronyd's "System clock wrong by X", ntpdig's
`offset`, ntplib's `offset` all use that sign).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

import ntplib

from bench.stack import REPO

WRONG_BY = re.compile(r"System clock wrong by (-?[0-9.]+) seconds")


@dataclass
class OneShot:
    wall_s: float
    offset_s: float | None
    output: str


def chronyd_query(address: str, port: int, *, options: str = "iburst maxsamples 1") -> OneShot:
    """One `chronyd -Q` run: a full chronyd process that measures once and exits."""
    argv = ["chronyd", "-Q", "-f", "/dev/null", f"server {address} port {port} {options}"]
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    wall = time.monotonic() - t0
    text = out.stdout + out.stderr
    m = WRONG_BY.search(text)
    return OneShot(wall, float(m.group(1)) if m else None, text)


def ntpdig_available() -> str | None:
    """None when ntpdig can run, else why not."""
    if shutil.which("ntpdig") is None:
        return "ntpdig is not installed (Debian package ntpsec-ntpdig)"
    return None


def install_ntpdig() -> str | None:
    """Install ntpsec-ntpdig the way `make` installs the other Debian packages, if missing.

    Returns None on success, else why ntpdig cannot be used.
    """
    if ntpdig_available() is None:
        return None
    try:
        subprocess.run(
            ["sh", str(REPO / "scripts" / "ensure-debs.sh"), "ntpsec-ntpdig"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"installing ntpsec-ntpdig failed: {exc}"
    return ntpdig_available()


def ntpdig_query(address: str) -> OneShot:
    """One `ntpdig -j` run. ntpdig has no port option: the server must listen on 123."""
    argv = ["ntpdig", "-j", "-t", "2", address]
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    wall = time.monotonic() - t0
    offset = None
    for line in out.stdout.splitlines():
        try:
            offset = float(json.loads(line)["offset"])
        except (ValueError, KeyError, TypeError):
            continue
    return OneShot(wall, offset, out.stdout + out.stderr)


def ntplib_request(address: str, port: int, timeout: float = 1.0) -> tuple[float, float]:
    """One in-process ntplib request: (seconds it took, offset)."""
    client = ntplib.NTPClient()
    t0 = time.perf_counter()
    answer = client.request(address, port=port, version=4, timeout=timeout)
    return time.perf_counter() - t0, answer.offset


def ntplib_sequential(servers: list[tuple[str, int]], timeout: float) -> tuple[float, int]:
    """The naive failover: ntplib through the list in order until one answers.

    Returns (seconds to the first answer, index of the server that answered).
    """
    client = ntplib.NTPClient()
    t0 = time.perf_counter()
    for i, (host, port) in enumerate(servers):
        try:
            client.request(host, port=port, version=4, timeout=timeout)
        except (ntplib.NTPException, OSError):
            continue
        return time.perf_counter() - t0, i
    raise RuntimeError("no server in the list answered")
