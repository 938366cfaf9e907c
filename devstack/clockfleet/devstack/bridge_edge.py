"""The edge broker of one data centre: make-bridges' edge-DC.conf, started with its ports and
paths replaced, agents only, over TLS, each as its own identity from the edge's own
clockfleet-identities directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clockfleet.devstack.bridge_configs import edge_template
from clockfleet.devstack.bridge_link import LinkProxy
from clockfleet.devstack.mosquitto import (
    ShippedBroker,
    launch,
    login_accepted,
    provision,
    record,
)
from clockfleet.protocol.connection import ConnectionSettings


@dataclass
class Edge(ShippedBroker):
    """A ShippedBroker whose only listener is its TLS one (`tls_port` is the daemon's port):
    every login goes over TLS, with the test CA."""

    dc: str = field(default="", kw_only=True)

    @property
    def url(self) -> str:
        # The test CA's server certificate names localhost (and 127.0.0.1).
        return self.tls_url

    @property
    def name(self) -> str:
        return f"edge {self.dc}"

    def accepts(self, identity: str) -> bool:
        """Does the edge take this identity's login now? Over TLS: it has no other listener."""
        password = self._read(identity)
        return login_accepted(self.host, self.port, identity, password, ca_file=self.ca_file)

    def login(self, identity: str, *, tls: bool = True) -> list[str]:
        """Connection flags for a clockfleet command as this identity on this edge."""
        return super().login(identity, tls=True)

    def settings(self, identity: str, *, tls: bool = True) -> ConnectionSettings:
        return super().settings(identity, tls=True)


def start_edge(
    rundir: Path,
    dc: str,
    generated: Path,
    certs: Path,
    central_address: str,
    link: LinkProxy,
    agents: Sequence[str] = (),
) -> Edge:
    """make-bridges' edge-DC.conf with its ports and paths replaced, its own identities and
    the test CA's server certificate (the one central has: both are named localhost)."""
    ids = provision(rundir / "ids", list(agents))
    template = edge_template(generated, dc, central_address, ids, certs, (link.host, link.port))
    record("bridges", shipped=True)
    daemon = launch(rundir / "mosquitto", template)
    # As generated (mode 0600): the copy Mosquitto runs holds the bridge's password too.
    Path(daemon.files["conf"]).chmod(0o600)
    return Edge(daemon, rundir, ids, certs, daemon.port, set(agents), dc=dc)
