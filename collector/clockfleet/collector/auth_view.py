"""Whether an agent syncs with authenticated time: read from its last report alone.

The chosen server's entry in `tried` says how its answers were authenticated (`auth: "nts"`,
absent for plain NTP: docs/nts.md). `/metrics` (`clockfleet_agent_authenticated`) and
`clockfleet status` (its `auth` column) read it the same way, here.
"""

from __future__ import annotations

from typing import Optional

from clockfleet.protocol.messages import Report


def chosen_auth(report: Optional[Report]) -> Optional[str]:
    """ "nts" when the good sync came from an NTS-authenticated answer, "none" for plain NTP,
    None without a good sync (nothing was chosen)."""
    if report is None or not report.ok or report.server is None:
        return None
    chosen = (report.server.host, report.server.port)
    for t in report.tried:
        if (t.host, t.port) == chosen and t.outcome == "ok":
            return "nts" if t.auth == "nts" else "none"
    return "none"


def authenticated_value(report: Optional[Report]) -> Optional[float]:
    """clockfleet_agent_authenticated: 1 NTS, 0 plain NTP, no sample without a good sync."""
    auth = chosen_auth(report)
    return None if auth is None else (1.0 if auth == "nts" else 0.0)
