"""NTS against a second implementation (issue 22): ntpsec's ntpd serving NTS, in a container
(its Debian package conflicts with chrony's, so it never goes on this machine). The agent's
own NTS client syncs against it, keeps its cookies, and `agent --once` reports it.

ntpd runs as the container's only process, host networking, no CAP_SYS_TIME (it cannot move
the clock: orphan mode at stratum 8 makes it a server with no upstream). It binds NTP on
127.0.0.1:123 and NTS-KE on 4460, its fixed ports: the test skips when either is taken.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clockfleet.agent.probe import NtsProbe, ProbeSettings, probe
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.devstack.nts_server import NtsPki, make_test_pki
from clockfleet.ntp.nts_exchange import NtsClient
from clockfleet.ntp.nts_tls import NtsTrust
from tests.agent.conftest import keys, publisher  # noqa: F401 - the agent's fixtures, shared
from tests.agent.servicekit import PREFIX, Keys, Publisher, list_object
from tests.hosts import hostkit

pytestmark = pytest.mark.slow

IMAGE = "clockfleet-ntpsec:bookworm"
KE_PORT = 4460
DOCKERFILE = """\
FROM clockfleet-host:bookworm
RUN apt-get update -q \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ntpsec \\
 && rm -rf /var/lib/apt/lists/*
"""
# Orphan mode: with no upstream, serve stratum 8 at once (not unsynchronised). Loopback
# unrestricted: under `restrict default` ntpd stops answering a client after ~20 requests in
# a few seconds, which the tests' back-to-back bursts reach (measured 2026-12-07).
NTP_CONF = """\
tos orphan 8
tos orphanwait 0
tos minclock 1 minsane 0
nts enable
nts cert /etc/ntpsec/srv.crt
nts key /etc/ntpsec/srv.key
interface ignore wildcard
restrict default nomodify noquery
restrict 127.0.0.1
"""


def _taken() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
        try:
            udp.bind(("127.0.0.1", 123))
            tcp.bind(("0.0.0.0", KE_PORT))
        except OSError as e:
            return f"127.0.0.1:123 or TCP {KE_PORT} is in use here ({e}): ntpd needs both"
    return None


@pytest.fixture(scope="module")
def ntpsec(engine: None, images: Callable[[str], str]) -> Iterator[NtsPki]:
    """ntpd (ntpsec) serving NTS on localhost; its test CA's PKI."""
    if (problem := _taken()) is not None:
        pytest.skip(problem)
    images("bookworm")
    work = Path(tempfile.mkdtemp(prefix="cf-ntpsec-", dir="/tmp"))
    (work / "Dockerfile").write_text(DOCKERFILE)
    built = subprocess.run(
        ["docker", "build", "--network", "host", "-q", "-t", IMAGE, str(work)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    pki = make_test_pki(work / "pki", names=("localhost", "127.0.0.1"))
    for f in (pki.cert, pki.key):
        f.chmod(0o644)  # read by ntpd inside the container, which drops no root here
    (work / "ntp.conf").write_text(NTP_CONF)
    mounts = [f"{work}/ntp.conf:/etc/ntpsec/test.conf:ro"]
    mounts += [f"{pki.cert}:/etc/ntpsec/srv.crt:ro", f"{pki.key}:/etc/ntpsec/srv.key:ro"]
    argv = ["docker", "run", "-d", "--rm", "--network", "host"]
    argv += [arg for m in mounts for arg in ("-v", m)]
    argv += [IMAGE, "ntpd", "-4", "-n", "-c", "/etc/ntpsec/test.conf"]
    container = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    cid = container.stdout.strip()
    try:
        hostkit.wait_for(lambda: _syncs(pki), 30, "ntpsec's ntpd to serve NTS")
        yield pki
    finally:
        logs = subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stderr
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)
        (work / "ntpd.log").write_text(logs)


def client(pki: NtsPki) -> NtsProbe:
    nts = NtsClient(trust=NtsTrust((str(pki.ca_cert),)))
    return NtsProbe({("localhost", 123): KE_PORT}, nts)


def _syncs(pki: NtsPki) -> bool:
    return probe([("localhost", 123)], ProbeSettings(), nts=client(pki)).ok


def test_agent_probe_syncs_with_ntpsecs_nts_and_resyncs_on_cookies(ntpsec: NtsPki) -> None:
    nts = client(ntpsec)
    first = probe([("localhost", 123)], ProbeSettings(), nts=nts)
    again = probe([("localhost", 123)], ProbeSettings(), nts=nts)
    assert first.ok and again.ok
    assert first.chosen is not None and first.chosen.auth == "nts"
    assert first.chosen.sample is not None and first.chosen.sample.stratum == 8
    assert nts.client is not None and nts.client.jar.handshakes == 1


def test_agent_once_syncs_against_ntpsec_with_nts(
    ntpsec: NtsPki,
    broker: ShippedBroker,
    keys: Keys,  # noqa: F811 - the fixture imported above
    publisher: Publisher,  # noqa: F811
    tmp_path: Path,
) -> None:
    obj = list_object("r1", 7, [])
    entry = {"host": "localhost", "port": 123, "nts": True}  # NTS-KE on the default 4460
    obj.update(schema="clock.servers/2", servers=[entry])
    publisher.raw(f"{PREFIX}/regions/r1/servers", publisher.signed(obj))
    argv = [sys.executable, "-m", "clockfleet", "agent", "--id", "a1", "--region", "r1"]
    argv += ["--once", "--backend", "observe", *broker.login("a1"), "--trust-key", str(keys.pub)]
    argv += ["--state-dir", str(tmp_path / "state"), "--no-timezone", "--timeout", "15"]
    argv += ["--nts-ca-file", str(ntpsec.ca_cert)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["ok"] is True and report["server"]["host"] == "localhost"
    assert report["tried"] == [
        {**report["tried"][0], "host": "localhost", "port": 123, "outcome": "ok", "auth": "nts"}
    ]
