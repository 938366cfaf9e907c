"""The publisher's own record of issued versions (the file --state-file names).

It is what keeps versions going up when the broker lost its retained state, so it is written
before anything is published (a version is never issued twice) and atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from clockfleet.publisher.versions import Kind

STATE_FORMAT = 1


@dataclass
class State:
    """Highest version issued per prefix, region and profile (the file --state-file names).

    {"format": 1, "prefixes": {"clock/v1": {"region": {"us-east": 2026112601},
                                            "profile": {"acme-01": 2026112601}}}}
    """

    path: Path
    prefixes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def get(self, prefix: str, kind: Kind, ident: str) -> int:
        return self.prefixes.get(prefix, {}).get(kind, {}).get(ident, 0)

    def record(self, prefix: str, kind: Kind, ident: str, version: int) -> None:
        table = self.prefixes.setdefault(prefix, {}).setdefault(kind, {})
        table[ident] = max(version, table.get(ident, 0))

    def save(self) -> None:
        """Atomically (temp file + rename): a crash never leaves half a record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": STATE_FORMAT, "prefixes": self.prefixes}, indent=1)
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


class StateError(ValueError):
    """The state file exists but cannot be read as a publisher state."""


def load_state(path: Path) -> State:
    if not path.exists():
        return State(path)
    try:
        data = json.loads(path.read_text())
        prefixes = data["prefixes"]
        ok = data.get("format") == STATE_FORMAT and all(
            isinstance(v, int) and not isinstance(v, bool)
            for kinds in prefixes.values()
            for table in kinds.values()
            for v in table.values()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StateError(f"state file {path}: unreadable ({exc}); fix or remove it") from None
    if not ok:
        raise StateError(f"state file {path}: not a clockfleet publisher state; fix or remove it")
    return State(path, prefixes)
