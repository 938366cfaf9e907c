"""Whether the broker's certificate dates are checked, and the one reason they may not be.

A host whose clock is provably behind (clock_evidence.py) could never connect to fetch the
list that would correct it: a certificate issued last month is "not yet valid" to a host in
2000. Such a host verifies the chain and the host name without the dates (OpenSSL's
X509_V_FLAG_NO_CHECK_TIME, as chrony's `nocerttimecheck` does for NTS) until its first good
sync. A host whose clock reads right never does: an expired certificate of the fleet's CA
held by a man in the middle would otherwise get its password.
"""

from __future__ import annotations

import collections
import logging
import ssl
from collections.abc import Callable
from typing import Optional

from clockfleet.protocol.connection import (
    cert_time_checked,
    is_cert_time_error,
    set_cert_time_check,
)

log = logging.getLogger("clockfleet.agent")


class CertDates:
    def __init__(
        self,
        agent_id: str,
        tls: Optional[ssl.SSLContext],
        clock_behind: Callable[[], Optional[str]],
        counters: collections.Counter[str],
    ) -> None:
        """`clock_behind()`: why the host's clock is provably behind, or None."""
        self.id = agent_id
        self.tls = tls
        self.clock_behind = clock_behind
        self.counters = counters

    def waive_after(self, exc: BaseException) -> bool:
        """A handshake failed with `exc`: True when it failed only on a certificate's dates
        and those are now waived on evidence (try again at once); False otherwise."""
        if self.tls is None or not is_cert_time_error(exc) or not cert_time_checked(self.tls):
            return False
        why = getattr(exc, "verify_message", exc)
        evidence = self.clock_behind()
        if evidence is None:
            self.counters["tls-cert-dates-refused"] += 1
            log.warning(
                "%s: broker certificate refused for its validity dates (%s), and nothing shows "
                "this host's clock is wrong: not connecting to it",
                self.id,
                why,
            )
            return False
        set_cert_time_check(self.tls, False)
        self.counters["tls-time-check-waived"] += 1
        log.warning(
            "%s: broker certificate refused at this host's clock (%s), which is provably "
            "behind (%s): verifying the chain without its validity dates until the first good "
            "sync",
            self.id,
            why,
            evidence,
        )
        return True

    def clock_known_good(self) -> None:
        """The host's clock is right: check certificates' dates again from now on."""
        if self.tls is not None and not cert_time_checked(self.tls):
            set_cert_time_check(self.tls, True)
            log.info("%s: clock synced: broker certificates' dates checked again", self.id)
