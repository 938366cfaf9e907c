"""NTS on a real host (issue 22): the packaged agent's chrony backend under systemd hands an
NTS server to the container's chronyd (-x), which does NTS-KE and authenticates every answer
itself (`chronyc -N authdata`); the agent's own probe speaks NTS to it as well. The NTS server
is chronyd on this machine's loopback, with a certificate of a test CA (host networking)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from clockfleet.devstack.nts_server import NtsServer, make_test_pki, start_nts_server
from tests.hosts import hostkit
from tests.hosts.stack import Stack, configure

pytestmark = pytest.mark.slow

# Debian 11's agent runs on Python 3.9 with the package's own pyOpenSSL and cryptography
# wheels for it; Debian 12's on 3.11. (13 runs the same code as 12, on a newer Python.)
SUITES = ["bullseye", "bookworm"]
CA = "/etc/clockfleet/nts-ca.pem"
CHRONY_CA = "/etc/chrony/nts-ca.pem"


@pytest.fixture(scope="module")
def nts_server(engine: None) -> Iterator[NtsServer]:
    work = Path(tempfile.mkdtemp(prefix="cf-nts-", dir="/tmp"))
    server = start_nts_server(work / "nts", make_test_pki(work / "pki"))
    yield server
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


def authdata(host: hostkit.SystemdHost) -> list[list[str]]:
    """chronyd's NTS sources with keys and cookies: Name, Mode, KeyID, Type, KLen, Last,
    Atmp, NAK, Cook, CLen."""
    out = host.sh("chronyc -c -N authdata").out
    rows = [line.split(",") for line in out.split()]
    return [r for r in rows if len(r) == 10 and r[1] == "NTS" and int(r[8]) > 0]


@pytest.mark.parametrize("suite", SUITES)
def test_chrony_backend_gives_chronyd_an_nts_source_it_authenticates(
    suite: str, fresh_host, stack: Stack, nts_server: NtsServer
) -> None:
    host = fresh_host(suite)
    host.put(CA, nts_server.pki.ca_cert.read_bytes(), 0o644)
    # chronyd's own copy: /etc/clockfleet is the agent's group's alone, _chrony cannot read it.
    host.put(CHRONY_CA, nts_server.pki.ca_cert.read_bytes(), 0o644)
    host.ok(f"echo 'ntstrustedcerts {CHRONY_CA}' >> /etc/chrony/chrony.conf")
    host.ok("systemctl restart chrony")
    # By the name in its certificate: Debian 11's chronyd (4.0) does no NTS-KE with a server
    # given by address ("Missing name of 127.0.0.1 for NTS-KE"); 4.3 would.
    entry = {"host": "localhost", "port": 123, "nts": True, "nts_ke_port": nts_server.ke_port}
    stack.regions["hosts-nts"] = [entry]
    agent_id = f"pbx-{suite}-nts"

    configure(
        host, stack, agent_id, region="hosts-nts", backend="chrony", extra={"nts_ca_file": CA}
    )

    report = stack.wait_report(agent_id, lambda r: r["ok"], host=host)
    assert report["discipline"] == "chrony"
    assert report["tried"][0]["auth"] == "nts" and report["tried"][0]["outcome"] == "ok"
    installed = host.ok("cat /etc/chrony/clockfleet/clockfleet.sources")
    assert f"server localhost port 123 iburst nts ntsport {nts_server.ke_port}" in installed
    try:
        (row,) = hostkit.wait_for(lambda: authdata(host), 30, "chronyd's authenticated NTS source")
    except hostkit.HostError as exc:
        shown = host.sh("chronyc -N authdata; chronyc -n sources; journalctl -u chrony -n 30")
        raise AssertionError(f"{exc}:\n{shown.out}") from None
    assert row[0] == "localhost" and row[3] == "15"  # AEAD_AES_SIV_CMAC_256
