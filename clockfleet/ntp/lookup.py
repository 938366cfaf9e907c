"""An NTP server's addresses, as the agent's probe and the publisher's preflight both ask."""

from __future__ import annotations

import socket
from typing import Union

Addresses = Union[list[tuple[int, tuple]], str]  # (family, sockaddr) in order, or why none


def addresses(host: str, port: int) -> Addresses:
    """Every distinct UDP address of host:port in the resolver's order, or one line saying
    why there is none. Blocks for as long as the resolver takes."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError, OverflowError) as e:
        return f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}"
    found: list[tuple[int, tuple]] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if (family, sockaddr) not in found:
            found.append((family, sockaddr))
    return found or f"cannot resolve {host}: no address"
