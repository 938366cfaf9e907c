"""The Debian suites the agent is packaged for, and its versions (docs/delivery.md).

The upstream version is the one the agent reports (`clockfleet.protocol.version.__version__`,
the one place it is set); a package's version is UPSTREAM-REVISION~debNu1, e.g.
0.1.0-1~deb12u1, so that one apt pool holds every suite's build and apt orders them as it
should: any newer upstream version or revision wins over any suite's older one, and within
one release Debian 11's build < 12's < 13's, so a host upgraded to the next Debian gets that
Debian's build of the same release. `u1`: a rebuild for one suite alone would be `u2`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSION_PY = "clockfleet/protocol/version.py"  # inside the project and the site-packages
VERSION_RE = re.compile(r'^__version__ = "([^"]*)"$', re.M)
# Debian's upstream_version, less the hyphen and colon (kept out so the Debian version always
# parses one way): starts with a digit.
UPSTREAM_RE = re.compile(r"\A[0-9][A-Za-z0-9.+~]*\Z")


@dataclass(frozen=True)
class Suite:
    name: str
    debian: int
    python: str  # the suite's python3 (major.minor)
    glibc: tuple[int, int]  # newest manylinux tag its libc takes
    polkit: str  # the package that runs polkitd
    polkit_rules: str  # "pkla" (polkit 0.105) or "js" (polkit >= 0.106)
    systemd_lib: str  # where the suite's packages put units and generators


SUITES = {
    s.name: s
    for s in (
        Suite("bullseye", 11, "3.9", (2, 31), "policykit-1", "pkla", "lib/systemd"),
        Suite("bookworm", 12, "3.11", (2, 36), "polkitd", "js", "lib/systemd"),
        # Debian 13 moved every package's files out of the aliased /lib into /usr/lib.
        Suite("trixie", 13, "3.13", (2, 41), "polkitd", "js", "usr/lib/systemd"),
    )
}


def project_version() -> str:
    """The version the agent reports: the one place it is set (tests/agent/test_version.py
    holds pyproject.toml's copy to it)."""
    m = VERSION_RE.search((REPO / VERSION_PY).read_text())
    if m is None:
        sys.exit(f"{VERSION_PY}: no __version__")
    return m.group(1)


def debian_version(upstream: str, suite: Suite, revision: int = 1) -> str:
    """UPSTREAM-REVISION~debNu1 (the module docstring says why)."""
    if not UPSTREAM_RE.match(upstream):
        raise ValueError(f"version {upstream!r}: digits, letters, '.', '+' or '~', from a digit")
    if revision < 1:
        raise ValueError(f"revision {revision}: 1 or more")
    return f"{upstream}-{revision}~deb{suite.debian}u1"


def deb_name(package: str, version: str, arch: str = "amd64") -> str:
    """The file name Debian gives a binary package (dpkg-name's)."""
    return f"{package}_{version}_{arch}.deb"
