"""Replacing a file so that a reader (chronyd, a PBX, the next agent start) never sees half."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_if_changed(path: Path, content: str, mode: int = 0o644) -> bool:
    """write_atomic unless `path` already holds `content`; False when nothing was written."""
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == content:
            return False
    write_atomic(path, content.encode(), mode)
    return True
