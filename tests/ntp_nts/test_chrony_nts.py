"""The chrony backend hands NTS servers to chronyd as `nts` sources; chronyd does the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from clockfleet.agent.backend_chrony import ChronyBackend, render_chrony_sources
from clockfleet.devstack.nts_server import NtsPki, NtsServer
from tests.agent.conftest import start_chrony_client
from tests.helpers import wait_until


def test_nts_servers_render_as_nts_sources() -> None:
    text = render_chrony_sources(
        [("a.example.net", 123), ("b.example.net", 123), ("192.0.2.1", 123)],
        ("a.example.net", 123),
        nts={("a.example.net", 123): 4460, ("b.example.net", 123): 4461},
    )
    assert text.splitlines()[1:] == [
        "server a.example.net port 123 iburst nts prefer",
        "server b.example.net port 123 iburst nts ntsport 4461",
        "server 192.0.2.1 port 123 iburst",
    ]


@pytest.mark.integration
def test_chronyd_fed_by_the_backend_authenticates_its_nts_source(
    nts_server: NtsServer, pki: NtsPki, short_tmp: Path
) -> None:
    client = start_chrony_client(
        short_tmp / "client", f"ntstrustedcerts {pki.ca_cert}\nntsdumpdir {short_tmp}/client\n"
    )
    try:
        backend = ChronyBackend(sourcedir=client.sourcedir, socket=client.socket)
        backend.nts_sources = {("127.0.0.1", 123): nts_server.ke_port}
        applied = backend.apply([("127.0.0.1", 123)], ("127.0.0.1", 123), 0.0)
        assert applied.ok, applied.detail

        def authenticated() -> list[list[str]]:
            # Name, Mode, KeyID, Type, KLen, Last, Atmp, NAK, Cook, CLen
            rows = [r.split(",") for r in client.chronyc("-c", "-N", "authdata").stdout.split()]
            return [r for r in rows if len(r) == 10 and r[1] == "NTS" and int(r[8]) > 0]

        (row,) = wait_until(authenticated, 20, "chronyd's NTS source with keys and cookies")
        assert row[0] == "127.0.0.1" and row[3] == "15"  # AEAD_AES_SIV_CMAC_256
    finally:
        client.daemon.stop()
