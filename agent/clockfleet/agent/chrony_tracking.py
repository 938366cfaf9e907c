"""chronyd's own view of the clock: `chronyc -n -c tracking`, read only.

`tracking` is a monitoring command: chronyd answers it on its UDP command port (localhost,
323 by default) to any local user, so the agent, which has no access to chronyd's Unix
socket (docs/hosts.md), reads it without privilege; chronyc tries the socket first and
falls back to UDP by itself. The CSV line holds, in order: reference id (hex), reference
name or address (`-n`: the address), stratum, reference time, system time (the correction
still to apply: positive when the system clock is slow), last offset (local minus true at
the last clock update), RMS offset, frequency (ppm, positive fast), residual frequency,
skew, root delay, root dispersion, update interval, leap status.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from clockfleet.agent.clock_backends import run_command
from clockfleet.protocol.messages import MAX_OFFSET_S, ChronyTracking

LEAPS = {
    "Normal": "normal",
    "Insert second": "insert",
    "Delete second": "delete",
    "Not synchronised": "unsynchronised",
}
FIELDS = 14
PPM_MAX = 1e9  # chronyd reports a skew of 2,000,000 ppm before its first estimate


class TrackingError(ValueError):
    """chronyc gave no usable tracking line; the message says what it gave."""


def _number(text: str, what: str, low: float = -MAX_OFFSET_S, high: float = MAX_OFFSET_S) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TrackingError(f"{what} {text[:40]!r} is not a number") from None
    if not math.isfinite(value) or not low <= value < high:
        raise TrackingError(f"{what} {value!r} out of range")
    return value


def parse_tracking_csv(text: str) -> ChronyTracking:
    """The first line of `chronyc -c tracking` as a ChronyTracking. Raises TrackingError."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    fields = line.split(",")
    if len(fields) != FIELDS:
        raise TrackingError(f"expected {FIELDS} fields, got {len(fields)}: {line[:120]!r}")
    leap = LEAPS.get(fields[13])
    if leap is None:
        raise TrackingError(f"unknown leap status {fields[13][:40]!r}")
    stratum = int(_number(fields[2], "stratum", 0))
    reference = fields[1] if fields[1].isprintable() and len(fields[1]) <= 64 else fields[0]
    return ChronyTracking(
        reference=reference[:64],
        stratum=min(stratum, 16),
        system_time_s=_number(fields[4], "system time"),
        last_offset_s=_number(fields[5], "last offset"),
        rms_offset_s=_number(fields[6], "rms offset", 0),
        frequency_ppm=_number(fields[7], "frequency", -PPM_MAX, PPM_MAX),
        skew_ppm=_number(fields[9], "skew", 0, PPM_MAX),
        root_delay_s=_number(fields[10], "root delay", 0),
        root_dispersion_s=_number(fields[11], "root dispersion", 0),
        update_interval_s=_number(fields[12], "update interval", 0),
        leap=leap,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class TrackingReader:
    """Reads the tracking of one chronyd. `chronyc` is the backend's command (agent.yaml
    `backend_options: {chronyc: [chronyc, -p, PORT]}` for a chronyd on another port)."""

    chronyc: Sequence[str] = ("chronyc",)
    timeout_s: float = 5.0

    def read(self) -> ChronyTracking:
        rc, out = run_command([*self.chronyc, "-n", "-c", "tracking"], self.timeout_s)
        if rc != 0:
            raise TrackingError(f"chronyc tracking: {out[:200] or f'exit code {rc}'}")
        return parse_tracking_csv(out)


def addresses_of(hosts: Sequence[str]) -> set[str]:
    """Every address chronyd may name for these hosts (it lists IP addresses with -n)."""
    found = set(hosts)
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
        except OSError:
            continue
        found.update(str(info[4][0]) for info in infos)
    return found


def settled_tracking(
    read: Callable[[], ChronyTracking],
    servers: Sequence[str],
    settle_s: float,
    step_s: float = 0.2,
) -> ChronyTracking:
    """chronyd's tracking once it follows one of `servers` (so its first update from the
    list the agent just handed over, and the step armed with it, are done), or the last read
    when `settle_s` runs out. Read right after a hand-over, tracking would still describe
    the clock before the correction: the very false alarm this reading exists to avoid."""
    wanted = addresses_of(servers)
    deadline = time.monotonic() + settle_s
    while True:
        tracking = read()
        if tracking.reference in wanted and tracking.leap != "unsynchronised":
            return tracking
        if time.monotonic() >= deadline:
            return tracking
        time.sleep(step_s)


def read_settled(
    chronyc: Sequence[str], servers: Sequence[str], settle_s: float
) -> tuple[Optional[ChronyTracking], Optional[str]]:
    """(tracking, None) or (None, why it could not be read)."""
    reader = TrackingReader(tuple(chronyc))
    try:
        return settled_tracking(reader.read, servers, settle_s), None
    except TrackingError as exc:
        return None, str(exc)
