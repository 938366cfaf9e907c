"""broker/mosquitto.conf, and the configs broker/bridges/make-bridges writes from it, with
exactly their paths and ports replaced: what the tests, the demo and the benchmarks run.

Each replaced line must occur exactly once (`replace_once`), so a change to a config that
this does not follow fails loudly instead of silently testing something else.
"""

from __future__ import annotations

from pathlib import Path

from clockfleet.devstack.daemons import LOOPBACK

REPO = Path(__file__).resolve().parents[3]
BROKER_DIR = REPO / "broker"


def replace_once(text: str, substitutions: dict[str, str], what: str) -> str:
    """Each key of `substitutions` replaced in `text`; each must occur exactly once, so a
    change to the config that the caller does not follow fails loudly instead of silently
    testing something else. `what` names the text in the error."""
    for old, new in substitutions.items():
        count = text.count(old)
        if count != 1:
            raise AssertionError(f"{what}: {old.strip()!r} occurs {count} times, not once")
        text = text.replace(old, new)
    return text


def path_substitutions(
    passwd: Path, certs: Path, acl: Path, acl_name: str = "acl"
) -> dict[str, str]:
    """The lines naming files, alike in broker/mosquitto.conf and every config make-bridges
    writes: the password file, the ACL (`acl_name` in /etc/mosquitto/clockfleet/), the TLS
    files, persistence and log (@RUNDIR@, which launch() fills in)."""
    return {
        "\npassword_file /etc/mosquitto/clockfleet/passwd\n": f"\npassword_file {passwd}\n",
        f"\nacl_file /etc/mosquitto/clockfleet/{acl_name}\n": f"\nacl_file {acl}\n",
        "\ncafile /etc/mosquitto/certs/ca.crt\n": f"\ncafile {certs}/ca.crt\n",
        "\ncertfile /etc/mosquitto/certs/server.crt\n": f"\ncertfile {certs}/server.crt\n",
        "\nkeyfile /etc/mosquitto/certs/server.key\n": f"\nkeyfile {certs}/server.key\n",
        "\npersistence_location /var/lib/mosquitto/\n": "\npersistence_location @RUNDIR@/\n",
        "\nlog_dest file /var/log/mosquitto/mosquitto.log\n": (
            "\nlog_dest file @RUNDIR@/mosquitto.log\n"
        ),
    }


def production_template(
    passwd: Path,
    certs: Path,
    tls_port: int,
    acl: Path,
    *,
    source: Path = BROKER_DIR / "mosquitto.conf",
) -> str:
    """`source` (broker/mosquitto.conf, or make-bridges' central.conf, which is that file
    with central's changes) with exactly its paths and ports replaced: the TLS listener on
    `tls_port`, the plain loopback listener as @PORT@ for launch()."""
    substitutions = {
        "\nlistener 8883\n": f"\nlistener {tls_port} {LOOPBACK}\n",
        "\nlistener 1883 127.0.0.1\n": "\nlistener @PORT@ @HOST@\n",
        **path_substitutions(passwd, certs, acl),
    }
    return replace_once(source.read_text(), substitutions, str(source))
