"""Text from messages made safe for the places it is shown: terminals, logs, metric labels.

A report's free text (`software`, `tried[].detail`, `error`, `note`) and anything a decoder
let through (a host with an IPv6 zone id carries arbitrary characters after `%`) must never
become structure where it lands: no control character, ANSI escape or line break reaches a
terminal or a log line, no unbounded string becomes a label value. Escaping for a specific
format (the exposition format's quotes, rich's markup) is the writer's job on top of this.
"""

from __future__ import annotations

# Free text in a label: enough for a version string or a short note, never a whole payload.
LABEL_TEXT_MAX = 64
# An agent or region id's longest valid form (ids.ID_PATTERN): the bound for an id in a
# label, which must not depend on the id having been validated.
ID_MAX = 64
ELLIPSIS = "…"


def _escape_char(c: str) -> str:
    # \x1b, \n, \u2028: visible, and unambiguous to whoever reads the log or the table.
    return c.encode("unicode_escape").decode("ascii")


def printable(text: str, limit: int | None = None) -> str:
    """`text` with every non-printable character written as its Python escape, and cut to
    at most `limit` characters (the cut marked with an ellipsis)."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape_char(c) for c in text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + ELLIPSIS
    return text
