"""Which server of a list gives the sync: the operator's order, and the falseticker rule.

A plain object fed with each server's `Attempt` in list order, however the attempts were
made (one by one, or staggered so that a silent server costs little): a later server wins
only when every earlier one failed. The first that passes wins, unless its offset exceeds
`confirm_offset_s`: then the next passing server must agree within `agree_s`; if it does not,
the first is a `falseticker` and the search goes on. On a first sync (`panic_s` given) an
offset beyond the panic limit is taken only when a second server confirms it; a list of one
server applies it unconfirmed and says so (docs/far-off-clocks.md).

A server counts once, by the address it answered from: a later entry that answered from an
address already counted (the same server under another spelling: a name and its address,
an IPv4 address and its IPv4-mapped IPv6 form, a CNAME and its target) neither confirms nor
contradicts anything, and is reported as such.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from clockfleet.ntp.checks import ProbeSettings, Sample
from clockfleet.ntp.lookup import host_key
from clockfleet.protocol.messages import Outcome, clip_text


@dataclass(frozen=True)
class Attempt:
    """One server's outcome, in list order."""

    host: str
    port: int
    outcome: Outcome
    detail: Optional[str] = None
    sample: Optional[Sample] = None
    address: Optional[str] = None  # the resolved address that answered (or failed last)
    requests: int = 0  # datagrams sent to this server in this probe
    auth: Optional[str] = None  # "nts": asked only with NTS (its outcome says how it went)


@dataclass
class ProbeResult:
    ok: bool
    chosen: Optional[Attempt]  # the server whose sample is applied
    tried: list[Attempt]  # every server of the list, in order; the rest "not-tried"
    note: Optional[str] = None


class Choice:
    def __init__(self, settings: ProbeSettings, panic_s: Optional[float], servers: int) -> None:
        self.settings = settings
        self.panic_s = panic_s  # set on a first sync: the limit a confirmation may waive
        self.servers = servers
        self.tried: list[Attempt] = []
        self.chosen: Optional[int] = None  # index in tried of the server whose sample wins
        self.pending: Optional[int] = None  # a passing server with a large offset, awaiting
        self.note: Optional[str] = None
        self.counted: dict[str, int] = {}  # address -> index in tried of the server it gave

    @property
    def decided(self) -> bool:
        return self.chosen is not None

    def add(self, attempt: Attempt) -> None:
        """The next server's outcome, in list order."""
        self.tried.append(attempt)
        if self.chosen is not None or attempt.sample is None:
            return
        address = host_key(attempt.address)
        if address is not None:
            if address in self.counted:
                earlier = self.tried[self.counted[address]]
                self.tried[-1] = replace(
                    attempt,
                    detail=clip_text(
                        f"answered from {attempt.address}, the address of {_name(earlier)}: "
                        "one server, counted once (no confirmation)"
                    ),
                )
                return
            self.counted[address] = len(self.tried) - 1
        offset = attempt.sample.offset_s
        if self.pending is not None:
            first = self.tried[self.pending]
            assert first.sample is not None
            claimed = first.sample.offset_s
            if abs(offset - claimed) <= self.settings.agree_s:
                self.chosen = self.pending
                self.note = (
                    f"offset {claimed:+.6f} s of {_name(first)} confirmed by "
                    f"{_name(attempt)} ({offset:+.6f} s)"
                )
                if self.panic_s is not None and abs(claimed) > self.panic_s:
                    self.note += (
                        f"; beyond the {self.panic_s:g} s panic limit, applied as a first sync"
                    )
                return
            self.tried[self.pending] = replace(
                first,
                outcome="falseticker",
                detail=(
                    f"offset {claimed:+.6f} s, but {_name(attempt)} says {offset:+.6f} s "
                    f"(more than {self.settings.agree_s:g} s apart)"
                ),
            )
            self.pending = None
        if abs(offset) > self.settings.confirm_offset_s:
            self.pending = len(self.tried) - 1
        else:
            self.chosen = len(self.tried) - 1

    def result(self) -> ProbeResult:
        """The verdict once every server was fed (or a server won)."""
        tried = self.tried
        if self.chosen is None and self.pending is not None:
            alone = tried[self.pending]
            assert alone.sample is not None
            offset = alone.sample.offset_s
            panic_s = self.panic_s
            if panic_s is not None and abs(offset) > panic_s and self.servers > 1:
                # A first sync may jump the clock by any amount, but only on two servers' word.
                tried[self.pending] = replace(
                    alone,
                    outcome="panic-offset",
                    detail=(
                        f"offset {offset:+.3f} s beyond the panic limit {panic_s:g} s and no "
                        "later server passed to confirm it"
                    ),
                )
            else:
                self.chosen = self.pending
                self.note = (
                    f"offset {offset:+.6f} s of {_name(alone)} applied unconfirmed: "
                    "no later server passed to confirm it"
                )
        if self.servers == 1 and self.chosen is not None:
            sample = tried[self.chosen].sample
            assert sample is not None
            self.note = f"single server: offset {sample.offset_s:+.6f} s applied unconfirmed"
            if self.panic_s is not None and abs(sample.offset_s) > self.panic_s:
                self.note += f", beyond the {self.panic_s:g} s panic limit, as a first sync"
        clipped = [
            a if clip_text(a.detail) == a.detail else replace(a, detail=clip_text(a.detail))
            for a in tried
        ]
        return ProbeResult(
            ok=self.chosen is not None,
            chosen=None if self.chosen is None else clipped[self.chosen],
            tried=clipped,
            note=clip_text(self.note),
        )


def _name(attempt: Attempt) -> str:
    return f"{attempt.host}:{attempt.port}"
