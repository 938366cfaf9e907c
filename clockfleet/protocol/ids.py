"""Identifiers, host names and time zone names as the wire contract allows them."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from functools import lru_cache

# No '.', '+', '#' or '/': NATS maps '.' to '//' and RabbitMQ swaps '.' and '/', so an id
# with a dot would name a different topic on another broker.
ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
_ID_RE = re.compile(rf"\A{ID_PATTERN}\Z")
_LABEL_RE = re.compile(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
# Every character a DNS name or a plain IP literal can hold. Checked before anything parses
# the text: Python's ipaddress accepts an IPv6 zone id ('fe80::1%eth0') with anything after
# the '%', newlines and whole config lines included.
_HOST_CHARS_RE = re.compile(r"\A[A-Za-z0-9.:-]+\Z")
MAX_HOST_LEN = 253


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and _ID_RE.match(value) is not None


def host_problem(host: str) -> str | None:
    """Why `host` is not an IP literal or DNS name, or None when it is one.

    One grammar at every boundary (fleet file, agent decode, backend write, collector): a
    host ends up in chrony's sources file, a timesyncd drop-in, a metric label and a
    terminal, so anything beyond letters, digits, '-', '.' and ':' (zone ids, spaces,
    newlines, quotes, shell characters) is refused.
    """
    if not isinstance(host, str) or not host:
        return "empty host"
    return _str_host_problem(host)


# Readers check every host of every report (the collector: tens of thousands a second) and
# the same few hosts recur, while ipaddress's parse costs ~5-10 us: remember the answers.
@lru_cache(maxsize=8192)
def _str_host_problem(host: str) -> str | None:
    if len(host) > MAX_HOST_LEN:
        return f"host longer than {MAX_HOST_LEN} characters"
    if not _HOST_CHARS_RE.match(host):
        bad = next(c for c in host if not _HOST_CHARS_RE.match(c))
        return (
            f"host {host[:64]!r} holds {bad!r}: only letters, digits, '-', '.' and ':' "
            "(no IPv6 zone ids, spaces or control characters)"
        )
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if ":" in host:
        return f"{host!r} is not a valid IPv6 address"
    labels = host.split(".")
    if all(label.isdigit() for label in labels):
        return f"{host!r} is not a valid IPv4 address"
    for label in labels:
        if not _LABEL_RE.match(label):
            return f"{host!r} is not a DNS name (label {label!r})"
    return None


# IANA names: letters, digits, '_', '+', '-' in '/'-separated parts ("America/Argentina/
# Buenos_Aires", "Etc/GMT+5"). Never '.', so never '..' or a path.
_ZONE_RE = re.compile(r"\A[A-Za-z0-9_+-]{1,30}(?:/[A-Za-z0-9_+-]{1,30}){0,3}\Z")
# Files in the tz directory that are not zones a host should be set to ("localtime" on
# Debian links back to /etc/localtime: setting it would make a loop).
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


def timezone_problem(name: str) -> str | None:
    """Why `name` is not an existing IANA zone name, or None when it is one.

    The name must look like an IANA name (so '../../etc/passwd' or '/etc/localtime' never
    reaches /etc/localtime) and the installed tz database must hold it as a zone file.
    Reading one zone is far cheaper than listing the whole database, which an agent's
    `--once` would otherwise pay at start-up.
    """
    if not isinstance(name, str) or not name:
        return "empty time zone"
    return _zone_problem(name)


@lru_cache(maxsize=1024)
def _zone_problem(name: str) -> str | None:
    unknown = f"unknown time zone {name!r} (not in the IANA tz database)"
    if not _ZONE_RE.match(name) or name in _NOT_ZONES:
        return unknown
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return unknown
    return None
