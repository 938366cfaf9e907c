"""An NTP server's addresses, as the agent's probe and the publisher's preflight both ask."""

from __future__ import annotations

import functools
import ipaddress
import socket
from typing import Any, Optional, Union

# A socket address as getaddrinfo gives it: (host, port) or (host, port, flowinfo, scope_id).
SockAddr = tuple[Any, ...]
Addresses = Union[list[tuple[int, SockAddr]], str]  # (family, sockaddr) in order, or why none


@functools.lru_cache(maxsize=4096)
def is_ip_literal(host: str) -> bool:
    """An address written out (127.0.0.1, ::1), not a name to look up. Cached: a fleet of
    10,000 agents asks it of the same few servers."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def addresses(host: str, port: int) -> Addresses:
    """Every distinct UDP address of host:port in the resolver's order, or one line saying
    why there is none. Blocks for as long as the resolver takes."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError, OverflowError) as e:
        return f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}"
    found: list[tuple[int, SockAddr]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if (family, sockaddr) not in found:
            found.append((family, sockaddr))
    return found or f"cannot resolve {host}: no address"


def host_key(address: Optional[str]) -> Optional[str]:
    """One string per host for an address an answer came from or a lookup gave: an
    IPv4-mapped IPv6 address is its IPv4 address, a zone id is dropped, and the port is not
    part of it (two daemons on one host share its clock: they are not two servers)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)
