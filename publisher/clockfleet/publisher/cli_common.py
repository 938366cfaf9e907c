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
