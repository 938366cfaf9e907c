"""`clockfleet keygen`: an Ed25519 key pair for signing region lists and profiles."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from clockfleet.protocol import signing
from clockfleet.protocol.ids import ID_PATTERN
from clockfleet.publisher.cli_common import KEYGEN, Parser, fail, parse


def keygen_main(argv: list[str]) -> int:
    year = datetime.now(timezone.utc).year
    p = Parser(
        prog=KEYGEN,
        description="Create an Ed25519 key pair for signing region lists and profiles. "
        "The key id is the file name; rotate by adding the new .pub to every agent's "
        "trust before the publisher signs with the new key.",
    )
    p.add_argument(
        "--out", metavar="DIR", required=True, type=Path, help="directory for KEY_ID.key and .pub"
    )
    p.add_argument(
        "--key-id",
        metavar="ID",
        default=f"ops-{year}",
        help=f"key id, {ID_PATTERN} (default: ops-{year})",
    )
    args = parse(p, argv)
    if isinstance(args, int):
        return args
    out: Path = args.out
    try:
        private, public = signing.generate(out, args.key_id)
    except signing.KeyFileError as exc:
        return fail(KEYGEN, str(exc))
    except OSError as exc:
        return fail(KEYGEN, f"cannot write to {out}: {exc}")
    print(f"private key: {private}")
    print("  stays with the publisher (mode 0600): clockfleet publish --signing-key, or")
    print("  signing_key: in fleet.yaml. Never copy it to agents.")
    print(f"public key:  {public}")
    print("  goes to every agent: clockfleet agent --trust-key (agents then refuse unsigned")
    print("  or wrongly signed lists and profiles).")
    return 0
