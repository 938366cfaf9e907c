"""One NTS server of a list, probed as steps (the NTS side of probe.probe_server_steps).

An entry with `nts: true` is asked only with NTS (clockfleet/ntp/nts_exchange.py): NTS-KE
when the agent's cookie jar holds nothing for it, then authenticated NTP to the server the
handshake named. Whatever fails, it is never asked in plain NTP; its Attempt says `auth`
"nts" whatever the outcome, so a report shows which entries were NTS's.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Optional

from clockfleet.agent.choice import Attempt
from clockfleet.ntp.checks import ProbeSettings
from clockfleet.ntp.exchange import Wait
from clockfleet.ntp.lookup import Addresses
from clockfleet.ntp.nts_exchange import NtsClient, nts_burst_steps

MAX_ADDRESSES = 4  # of one name, as probe.py


@functools.lru_cache(maxsize=1)
def nts_missing() -> Optional[str]:
    """Why this agent cannot speak NTS (the optional libraries are not installed), or None."""
    try:
        import OpenSSL.SSL  # noqa: F401
        from cryptography.hazmat.primitives.ciphers.aead import AESSIV  # noqa: F401
    except ImportError as e:
        return f"this agent cannot speak NTS ({e}; install clockfleet[nts])"
    return None


def nts_server_steps(
    host: str,
    port: int,
    ke_port: int,
    settings: ProbeSettings,
    resolved: Addresses,
    client: Optional[NtsClient],
    on_answer: Optional[Callable[[], None]] = None,
) -> Generator[Wait, None, tuple[Attempt, Optional[str]]]:
    """The NTS server's Attempt and the kiss code received, if any (as probe_server_steps)."""
    if isinstance(resolved, str):
        outcome = "unreachable" if resolved.startswith("port ") else "unresolvable"
        return Attempt(host, port, outcome, resolved, auth="nts"), None  # type: ignore[arg-type]
    missing = nts_missing()
    if missing is not None or client is None:
        why = missing or "no NTS client configured for this probe"
        return Attempt(host, port, "nts-ke-refused", why, auth="nts"), None
    key = (host, ke_port, port)
    burst, address = yield from nts_burst_steps(
        client, key, resolved[:MAX_ADDRESSES], settings, on_answer
    )
    failure = burst.failure
    kiss = failure.kiss if failure is not None else None
    if burst.sample is not None:
        detail = None if kiss is None else f"kiss code {kiss} received after a good sample"
        return Attempt(
            host, port, "ok", detail, burst.sample, address, burst.requests, auth="nts"
        ), kiss
    assert failure is not None
    return Attempt(
        host, port, failure.outcome, failure.detail, None, address, burst.requests, auth="nts"
    ), kiss
