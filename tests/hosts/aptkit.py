"""Signed apt repositories of the agent's packages, served over HTTP on 127.0.0.1 only, for the
delivery tests (cloud-init, the Debian 12 walk, the Ansible role). Fixtures: conftest.py.

One archive key and one HTTP server per session; each test gets a repository of its own
under the server's root (`Archive.repo`), made and extended with the shipped tool
(packaging/apt_repo.py), so that publishing a newer build to one test's repository changes
nothing another test sees. Hosts reach it through host networking, as a PBX reaches its
mirror; before anything else they stop using the image's own Debian mirror (`offline_apt`),
so no test traffic leaves this machine.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.hosts import hostkit

TOOL = hostkit.REPO / "packaging" / "apt_repo.py"
KEYRING_ASC = "clockfleet-archive-keyring.asc"
KEYRING_GPG = "clockfleet-archive-keyring.gpg"
# The newer build the upgrade tests publish: another upstream version of this checkout
# (packaging/build_deb.py --version stamps it into the agent, which reports it).
NEWER_SUFFIX = "+upgrade1"


def upstream_version() -> str:
    from clockfleet.protocol.version import __version__

    return __version__


def debian_version(upstream: str, suite: str) -> str:
    debian = {"bullseye": 11, "bookworm": 12, "trixie": 13}[suite]
    return f"{upstream}-1~deb{debian}u1"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Repo:
    path: Path
    url: str
    gnupghome: Path

    def publish(self, *debs: Path) -> None:
        """Add packages with the shipped tool: the pool, the indexes, signed."""
        argv = [sys.executable, str(TOOL), "--repo", str(self.path)]
        argv += ["--gnupghome", str(self.gnupghome), *map(str, debs)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise hostkit.HostError(f"apt_repo.py: {r.stdout}{r.stderr}")

    @property
    def key_asc(self) -> str:
        return (self.path / KEYRING_ASC).read_text()


class Archive:
    """The session's HTTP server on 127.0.0.1 and its archive key (a gpg home of its own)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gnupghome = root.parent / "gnupg"
        sys.path.insert(0, str(TOOL.parent))
        try:
            import apt_repo

            apt_repo.new_key(self.gnupghome, "clockfleet tests <tests@example.net>")
        finally:
            sys.path.remove(str(TOOL.parent))
        handler = functools.partial(_Quiet, directory=str(root))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def repo(self, name: str) -> Repo:
        path = self.root / name
        path.mkdir(parents=True)
        return Repo(path, f"{self.url}/{name}", self.gnupghome)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        subprocess.run(
            ["gpgconf", "--homedir", str(self.gnupghome), "--kill", "gpg-agent"],
            capture_output=True,
        )


def offline_apt(host: hostkit.SystemdHost) -> None:
    """The image's Debian mirror out of apt's sources: the host reaches our repository only."""
    host.ok("mv /etc/apt/sources.list /root/sources.list.image && rm -f /etc/apt/sources.list.d/*")


def agent_restarts_since(host: hostkit.SystemdHost, cursor: str) -> int:
    """How often the agent's process started after the journal `cursor`: its own first line,
    "agent ID starting (backend B)" (systemd's messages for a start and a restart job differ
    between versions)."""
    out = host.ok(
        f"journalctl --no-pager -o cat --after-cursor='{cursor}' "
        "_SYSTEMD_UNIT=clockfleet-agent.service"
    )
    return sum(1 for line in out.splitlines() if " starting (backend " in line)


def journal_cursor(host: hostkit.SystemdHost) -> str:
    out = host.ok("journalctl --no-pager -o json -n 1")
    return str(json.loads(out.splitlines()[-1])["__CURSOR"])


def installed_version(host: hostkit.SystemdHost) -> str:
    return host.ok("dpkg-query -W -f='${Version}' clockfleet-agent").strip()


# What docs/delivery.md, the cloud-init template and the Ansible role put in
# /etc/apt/preferences.d/clockfleet: only clockfleet-agent comes from the clockfleet origin.
PIN = (
    "Package: clockfleet-agent\nPin: release o=clockfleet\nPin-Priority: 500\n\n"
    "Package: *\nPin: release o=clockfleet\nPin-Priority: -1\n"
)
