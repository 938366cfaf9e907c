"""`clockfleet publish`'s command line: its help text and every flag, in --help's order."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from clockfleet.protocol.connection import add_arguments, command_parser
from clockfleet.protocol.ids import ID_PATTERN
from clockfleet.publisher.canary import DEFAULT_BAKE_S
from clockfleet.publisher.cli_common import EXIT_CODES, PUBLISH, STATE_FILE_NAME, Parser

PUBLISH_DESCRIPTION = """\
Validate the fleet file, then publish every region's NTP server list and every agent's
profile that differs from what the broker holds, as signed, retained MQTT messages (QoS 1,
waiting for each PUBACK). An unchanged file publishes nothing. A changed region or profile
gets version = max(verified version on the broker, the state file's record, YYYYMMDD00 of
today) + 1, so versions never go backwards even when the broker lost its retained state.
Only a broker copy whose signature verifies with a key this publisher holds (--signing-key,
--trust-key) counts: an unsigned or forged retained message is reported, not counted, and
replaced.

An invalid file is reported in full (FILE:LINE: PATH: reason per problem) with exit 2, and
nothing is published. --check checks the file and stops there (no broker, no key: for CI).

The broker, identity and CA come from the flags below, else the environment, else a
connection file (see "broker connection"), so `clockfleet publish --dry-run` is enough once
~/.config/clockfleet/operator.yaml names them.

Preflight: every server that is new in a changed list, or at another position, is queried
from this host with the agents' own checks, one line per server. A server that fails blocks
the publish (exit 4) unless --force: some servers answer only from the PBXs' networks.
"""


def _exit_table() -> str:
    lines = ["exit codes (--json names each as `outcome`):"]
    for code, (name, meaning) in EXIT_CODES.items():
        lines.append(f"  {code} {name}: {meaning}")
    return "\n".join(textwrap.fill(ln, 92, subsequent_indent="      ") for ln in lines)


EXIT_TABLE = _exit_table()

PUBLISH_EPILOG = f"""\
fleet file: `signing_key` (optional, relative to the file), `defaults` (poll_interval_s
16..604800, resync_jitter_s 0..3600), `regions` (id -> timezone, servers [{{host, port}}] in
the order agents try them, optional poll_interval_s/resync_jitter_s) and `agents` (id ->
region, optional timezone; default: the region's). Ids: {ID_PATTERN}. Unknown keys are
errors. Example: config/fleet.yaml; JSON Schema for editors: schemas/fleet.schema.json.

{EXIT_TABLE}

state file: JSON with the highest version issued per prefix, region and profile, written
before publishing. Default: .publisher-state.json next to the fleet file. Keep it (it is
what stops versions from going backwards when the broker lost its state); keep it out of git.
"""


def publish_parser() -> argparse.ArgumentParser:
    p = command_parser(PUBLISH, PUBLISH_DESCRIPTION, epilog=PUBLISH_EPILOG, parser_class=Parser)
    _add_input_flags(p)
    _add_broker_flags(p)
    _add_change_flags(p)
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run as one JSON object on stdout (schema clockfleet-publish/1: outcome, "
        "exit_code, error, problems, changes, counts, and the lines a person would read); "
        "errors still go to stderr as well",
    )
    add_arguments(p)
    return p


def _add_input_flags(p: argparse.ArgumentParser) -> None:
    """What the run reads: the fleet file, the keys, the publisher's record."""
    p.add_argument(
        "--config",
        metavar="FILE",
        default="config/fleet.yaml",
        type=Path,
        help="the fleet file (default: config/fleet.yaml)",
    )
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        type=Path,
        help="Ed25519 private key (from `clockfleet keygen`); overrides the file's signing_key. "
        "Without any key the lists go out unsigned, and agents with a trust key refuse them",
    )
    p.add_argument(
        "--trust-key",
        metavar="FILE|DIR",
        type=Path,
        action="append",
        default=[],
        help="public key (.pub, or a directory of them) whose signatures on the broker's "
        "copies count as this publisher's own, e.g. the key retired by a rotation; repeatable. "
        "The signing key's own public half always counts",
    )
    p.add_argument(
        "--accept-version-jump",
        action="store_true",
        help="adopt a verified version on the broker even when it is more than 1,000,000 "
        "above this publisher's record and today's date floor (refused by default, exit 6)",
    )
    p.add_argument(
        "--state-file",
        metavar="FILE",
        type=Path,
        help=f"the publisher's record of issued versions (default: {STATE_FILE_NAME} "
        "next to the fleet file)",
    )


def _add_broker_flags(p: argparse.ArgumentParser) -> None:
    """What the run does with the broker: nothing at all, look only, withdraw, how long to
    wait."""
    p.add_argument(
        "--check",
        action="store_true",
        help="check the fleet file (and the lists and profiles it means, with the agents' "
        "strict decoder) and stop: no broker, no key, no state file (for CI); exit 0 or 2",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would change against the broker (old -> new version, fields that "
        "differ) and publish nothing",
    )
    p.add_argument(
        "--prune",
        action="store_true",
        help="withdraw (empty retained message) regions and profiles the broker holds but the "
        "file no longer has; without it they are left in place and listed",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="seconds to wait for the broker at each step (default: 10)",
    )


def _add_change_flags(p: argparse.ArgumentParser) -> None:
    """How a changed list goes out: as a canary first, after the preflight."""
    p.add_argument(
        "--canary",
        metavar="PERCENT",
        help="publish changed server lists to this share of each region's agents first (e.g. "
        "10%%), then promote or abort by the cohort's reports (docs/rollout.md); default: the "
        "fleet file's rollout.canary, else 0 (the whole region at once)",
    )
    p.add_argument(
        "--bake",
        metavar="SECONDS",
        type=float,
        help="with a canary: how long the cohort runs the new list before promotion "
        f"(default: rollout.bake_s, else {DEFAULT_BAKE_S})",
    )
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="with a canary: publish it and exit; `clockfleet rollout run` decides later",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="publish even when a new or moved server fails the preflight (it may answer "
        "only from the PBXs' networks, not from this host)",
    )
    p.add_argument(
        "--no-preflight",
        action="store_true",
        help="do not query new or moved servers before publishing (e.g. no NTP traffic is "
        "allowed out of this host, or none of the servers is reachable from it)",
    )
