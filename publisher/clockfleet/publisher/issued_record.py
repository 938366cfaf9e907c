"""The publisher's own record of what it issued (the file --state-file names).

It keeps versions going up when the broker lost its retained state, and it is the authority
on what is current: a broker copy older than the record, or at the recorded version but not
the payload issued then, is stale (a replay), whatever its signature (docs/trust.md). It is
written before anything is published (a version is never issued twice) and atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from clockfleet.publisher.versions import Kind

STATE_FORMAT = 1

# prefix -> kind -> id -> value: a version in `prefixes`, a payload digest in `issued`.
Table = dict[str, dict[str, dict[str, int]]]
Digests = dict[str, dict[str, dict[str, str]]]


@dataclass
class IssuedRecord:
    """Highest version issued per prefix, region and profile, and a digest of the payload
    issued at it (the file --state-file names).

    {"format": 1, "prefixes": {"clock/v1": {"region": {"us-east": 2026112601},
                                            "profile": {"acme-01": 2026112601}}},
     "issued": {"clock/v1": {"region": {"us-east": "<sha256 of the payload>"}}}}

    `issued` came later: a record without it judges copies by version alone.
    """

    path: Path
    prefixes: Table = field(default_factory=dict)
    issued: Digests = field(default_factory=dict)

    def last_version(self, prefix: str, kind: Kind, ident: str) -> int:
        """The highest version this publisher issued for the entry; 0 when none."""
        return self.prefixes.get(prefix, {}).get(kind, {}).get(ident, 0)

    def digest(self, prefix: str, kind: Kind, ident: str) -> str | None:
        """The digest of the payload issued at the recorded version, if recorded."""
        return self.issued.get(prefix, {}).get(kind, {}).get(ident)

    def record(
        self, prefix: str, kind: Kind, ident: str, version: int, payload: bytes | None = None
    ) -> None:
        table = self.prefixes.setdefault(prefix, {}).setdefault(kind, {})
        if version >= table.get(ident, 0) and payload is not None:
            digests = self.issued.setdefault(prefix, {}).setdefault(kind, {})
            digests[ident] = payload_digest(payload)
        table[ident] = max(version, table.get(ident, 0))

    def staleness(
        self, prefix: str, kind: Kind, ident: str, version: int, payload: bytes
    ) -> str | None:
        """Why a verified broker copy is not what this publisher issued last, or None."""
        recorded = self.last_version(prefix, kind, ident)
        if version < recorded:
            return f"version {version} is older than v{recorded}, which this publisher issued"
        digest = self.digest(prefix, kind, ident)
        if version == recorded and digest is not None and digest != payload_digest(payload):
            return f"version {version} is not the copy this publisher issued at v{recorded}"
        return None

    def save(self) -> None:
        """Atomically (temp file + rename): a crash never leaves half a record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, object] = {"format": STATE_FORMAT, "prefixes": self.prefixes}
        if self.issued:
            data["issued"] = self.issued
        text = json.dumps(data, indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def payload_digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


class StateFileError(ValueError):
    """The state file exists but cannot be read as the publisher's record."""


def load(path: Path) -> IssuedRecord:
    """The record in `path` (an empty one when there is no file), or StateFileError."""
    if not path.exists():
        return IssuedRecord(path)
    try:
        # json.loads gives Any: every value is checked below before it is trusted.
        data = json.loads(path.read_text())
        prefixes = data["prefixes"]
        issued = data.get("issued", {})
        ok = (
            data.get("format") == STATE_FORMAT
            and all(
                isinstance(v, int) and not isinstance(v, bool)
                for kinds in prefixes.values()
                for table in kinds.values()
                for v in table.values()
            )
            and all(
                isinstance(v, str)
                for kinds in issued.values()
                for t in kinds.values()
                for v in t.values()
            )
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateFileError(f"state file {path}: unreadable ({exc}); fix or remove it") from None
    if not ok:
        raise StateFileError(
            f"state file {path}: not a clockfleet publisher state; fix or remove it"
        )
    return IssuedRecord(path, prefixes, issued)
