"""What the publisher's commands (`clockfleet publish`, `rollout`, `keygen`) share, written
once: the argument parser that says a bad argument in one line, the failure line, and
loading the keys and the publisher's record (the state file).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from clockfleet.protocol import signing
from clockfleet.publisher import issued_record
from clockfleet.publisher.issued_record import IssuedRecord

PUBLISH = "clockfleet publish"
ROLLOUT = "clockfleet rollout"
KEYGEN = "clockfleet keygen"

STATE_FILE_NAME = ".publisher-state.json"

# `clockfleet publish`'s exit codes, one per outcome a script or a CI job acts on differently:
# fix the file (2), retry later (5), look at the servers (4), look at the key (6). The one
# table --help, docs/publisher.md and --json's `outcome` are written from.
EXIT_OK = 0
EXIT_BROKER_REFUSED = 1
EXIT_INVALID = 2
EXIT_CANARY_ABORTED = 3  # rollout_run.EXIT_ABORTED: `rollout run` exits with it too
EXIT_PREFLIGHT = 4
EXIT_UNREACHABLE = 5
EXIT_VERSION_JUMP = 6
EXIT_CODES: dict[int, tuple[str, str]] = {
    EXIT_OK: (
        "ok",
        "published, or nothing to publish, or a dry run, or --check found the file valid",
    ),
    EXIT_BROKER_REFUSED: (
        "broker-refused",
        "the broker refused a publish (e.g. its ACL denies this identity) or did not acknowledge "
        "it within --timeout, refused this identity the lists, or did not answer the snapshot "
        "fence; a canary's reports could not be read or its decision not be sent",
    ),
    EXIT_INVALID: (
        "invalid",
        "a bad argument, an invalid fleet file (each problem as FILE:LINE: PATH: reason), a bad "
        "key, connection or state file, or a canary that cannot start",
    ),
    EXIT_CANARY_ABORTED: ("canary-aborted", "--canary: the canary aborted (docs/rollout.md)"),
    EXIT_PREFLIGHT: (
        "preflight-failed",
        "a new or moved server failed the preflight from this host (without --force)",
    ),
    EXIT_UNREACHABLE: (
        "broker-unreachable",
        "no broker answered, the TLS handshake failed, or the broker refused the login",
    ),
    EXIT_VERSION_JUMP: (
        "version-jump",
        "a verified version on the broker is more than 1,000,000 above this publisher's record "
        "and today's date floor (a leaked key or a broken publisher; --accept-version-jump "
        "adopts it)",
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (and exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code argparse chose (--help: 0, a bad one: 2)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def complain(prog: str, line: str) -> None:
    """One line on stderr, named by the command."""
    print(f"{prog}: {line}", file=sys.stderr)


def fail(prog: str, message: str, code: int = 2) -> int:
    """Say why the command stops, and return its exit code."""
    complain(prog, message)
    return code


@dataclass(frozen=True)
class Keys:
    """The key that signs, if any, and the keys whose signatures on the broker's copies
    count as this publisher's own (every --trust-key and the signing key's public half)."""

    signing_key: signing.SigningKey | None
    trust: signing.TrustStore


def load_keys(signing_key: Path | None, trust_keys: list[Path]) -> Keys:
    """The signing key (from `signing_key`, when given) and the trust; signing.KeyFileError
    names the file that cannot be used."""
    key = signing.load_signing_key(signing_key) if signing_key is not None else None
    trust = signing.load_trust(trust_keys)
    if key is not None:
        trust.keys.update(signing.trust_of(key).keys)
    return Keys(key, trust)


def load_record(state_file: Path | None, config: Path) -> IssuedRecord:
    """The publisher's record: --state-file, by default STATE_FILE_NAME next to the fleet
    file; issued_record.StateFileError when it cannot be read."""
    return issued_record.load(state_file or config.parent / STATE_FILE_NAME)
