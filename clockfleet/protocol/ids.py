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
MAX_HOST_LEN = 253


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and _ID_RE.match(value) is not None


def host_problem(host: str) -> str | None:
    """Why `host` is not an IP literal or DNS name, or None when it is one.

    A host ends up in chrony's configuration and in log lines, so anything beyond
    letters, digits, '-', '.' and ':' (spaces, newlines, quotes, shell characters) is refused.
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


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezone_problem(name: str) -> str | None:
    """Why `name` is not an existing IANA zone name, or None when it is one.

    Only names from the installed tz database count, so a path such as
    '../../etc/passwd' can never reach /etc/localtime.
    """
    if not isinstance(name, str) or not name:
        return "empty time zone"
    if name not in _zones():
        return f"unknown time zone {name!r} (not in the IANA tz database)"
    return None
