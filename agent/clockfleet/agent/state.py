"""The agent's state directory: what it must remember across restarts, and its status file.

    STATE_DIR/list.json     last good server list, the raw signed payload (re-verified on load)
    STATE_DIR/profile.json  last good profile, raw signed payload
    STATE_DIR/state.json    versions applied per region, profile version, session counter
    STATE_DIR/report.json   last report as published
    STATE_DIR/last_good.json  when the last good sync happened, by the boot clock (its age
                            after a restart must not rest on a wall clock that may be off)
    STATE_DIR/status.json   for local readers (a PBX): is this host's clock trustworthy now?

Every file is written atomically (temp file in the same directory, fsync, rename), so a crash
leaves the old or the new file, never half of one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

from clockfleet.agent.files import write_atomic
from clockfleet.protocol import codec, signing
from clockfleet.protocol.codec import Rejected, utcnow_iso
from clockfleet.protocol.messages import Profile, Report, ServerList
from clockfleet.protocol.signing import M

log = logging.getLogger("clockfleet.agent.state")


@dataclass
class Remembered:
    """The small facts in state.json."""

    session: int = 0
    list_versions: dict[str, int] = field(default_factory=dict)  # region -> last applied
    profile_version: int | None = None


class StateDir:
    """One agent's state directory. Errors writing it are logged, never fatal: keeping time
    matters more than remembering."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    # --- reading -------------------------------------------------------------------------

    def _read(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("state %s unreadable: %s", self.path / name, exc)
            return None

    def load_remembered(self) -> Remembered:
        raw = self._read("state.json")
        if raw is None:
            return Remembered()
        try:
            obj = json.loads(raw)
            versions = {
                str(k): int(v)
                for k, v in obj.get("list_versions", {}).items()
                if isinstance(v, int) and not isinstance(v, bool)
            }
            pv = obj.get("profile_version")
            session = obj.get("session", 0)
            return Remembered(
                session=session if isinstance(session, int) and session >= 0 else 0,
                list_versions=versions,
                profile_version=pv if isinstance(pv, int) and not isinstance(pv, bool) else None,
            )
        except (ValueError, AttributeError, TypeError) as exc:
            log.warning("state %s is corrupt (%s); starting from scratch", self.path, exc)
            return Remembered()

    def load_list_payload(self) -> bytes | None:
        return self._read("list.json")

    def load_profile_payload(self) -> bytes | None:
        return self._read("profile.json")

    def load_report(self) -> bytes | None:
        return self._read("report.json")

    # --- writing -------------------------------------------------------------------------

    def _write(self, name: str, data: bytes) -> bool:
        try:
            self.ensure()
            write_atomic(self.path / name, data)
            return True
        except OSError as exc:
            log.error("cannot write state %s: %s", self.path / name, exc)
            return False

    def save_remembered(self, r: Remembered) -> None:
        body = {
            "session": r.session,
            "list_versions": r.list_versions,
            "profile_version": r.profile_version,
        }
        self._write("state.json", json.dumps(body, sort_keys=True).encode())

    def save_list_payload(self, payload: bytes) -> None:
        self._write("list.json", payload)

    def save_profile_payload(self, payload: bytes) -> None:
        self._write("profile.json", payload)

    def save_report(self, payload: bytes) -> None:
        self._write("report.json", payload)

    def save_last_good(self, report: Report, wall_now: float) -> None:
        """Remember when the good sync `report` was made, by this boot's own clock."""
        boot_id, boot_s = boot_clock()
        body = {"at": utcnow_iso(report.at), "boot_id": boot_id, "boot_s": boot_s}
        self._write("last_good.json", json.dumps({**body, "wall_s": wall_now}).encode())

    def last_good_at(self) -> float | None:
        """When the last good sync was made (unix seconds, from the corrected clock), if
        remembered: a time this host knows has passed (clock_evidence.py)."""
        raw = self._read("last_good.json")
        try:
            saved = json.loads(raw) if raw else None
            at = saved.get("at") if isinstance(saved, dict) else None
            when = datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ") if isinstance(at, str) else None
        except (ValueError, TypeError):
            return None
        return None if when is None else when.replace(tzinfo=timezone.utc).timestamp()

    def last_good_age(self, report: Report, wall_now: float, tolerance_s: float) -> float | None:
        """Seconds since the good sync `report`, or None when that cannot be known.

        Known only within the same boot (the boot clock counts from boot, and a reboot with a
        dead RTC starts the wall clock anywhere) and only while the wall clock has moved as
        the boot clock did since then, within `tolerance_s` (if it went back or jumped, the
        sync no longer vouches for it).
        """
        raw = self._read("last_good.json")
        try:
            saved = json.loads(raw) if raw else None
            boot_id, boot_s = boot_clock()
            if (
                not isinstance(saved, dict)
                or saved.get("at") != utcnow_iso(report.at)
                or saved.get("boot_id") != boot_id
                or boot_id is None
            ):
                return None
            age = boot_s - float(saved["boot_s"])
            wall_moved = wall_now - float(saved["wall_s"])
        except (ValueError, TypeError, KeyError):
            return None
        if age < 0 or abs(wall_moved - age) > tolerance_s:
            return None
        return age

    def save_status(self, status: dict[str, Any]) -> None:
        self._write("status.json", json.dumps(status, sort_keys=True, indent=1).encode() + b"\n")


def boot_clock() -> tuple[str | None, float]:
    """This boot's id and the seconds since it began (suspend included): neither moves with
    the wall clock. The id is None where the kernel does not say (then no age is known)."""
    try:
        boot_id: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    clock = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    return boot_id, time.clock_gettime(clock)


# --- what a restarted agent picks up ---------------------------------------------------------


@dataclass
class Cached:
    """What the state directory held, each part verified again (None where refused)."""

    profile: Optional[Profile] = None
    profile_payload: Optional[bytes] = None
    server_list: Optional[ServerList] = None
    list_payload: Optional[bytes] = None
    report: Optional[Report] = None
    report_payload: Optional[bytes] = None
    last_good: Optional[LastGood] = None
    refused: list[str] = field(default_factory=list)  # rejection reasons, to count


def load_cached(
    state: StateDir,
    agent_id: str,
    trust: signing.TrustStore,
    *,
    with_report: bool,
    wall_now: float,
    trust_offset_s: float,
) -> Cached:
    """The last good profile and list (decoded strictly and signature-checked again: the
    files may have been tampered with) and, `with_report`, the last report and the good sync
    it vouches for, when that sync's age can be proven (`StateDir.last_good_age`)."""
    out = Cached()

    def cached(name: str, cls: type[M], raw: bytes | None, topic_id: str | None) -> M | None:
        if not raw:
            return None
        try:
            return signing.decode_signed(cls, raw, topic_id, trust)[0]
        except Rejected as r:
            out.refused.append(r.reason)
            log.warning("%s: cached %s refused (%s): %s", agent_id, name, r.reason, r.detail)
            return None

    raw_profile = state.load_profile_payload()
    out.profile = cached("profile", Profile, raw_profile, agent_id)
    out.profile_payload = raw_profile if out.profile is not None else None
    raw_list = state.load_list_payload()
    out.server_list = sl = cached("list", ServerList, raw_list, None)
    if sl is not None:
        out.list_payload = raw_list
        log.info(
            "%s: cached list v%d of region %s loaded (%d servers)",
            agent_id,
            sl.version,
            sl.region,
            len(sl.servers),
        )
    raw = state.load_report() if with_report else None
    if not raw:
        return out
    try:
        rep, _ = codec.decode(Report, raw, topic_id=agent_id, check_future=False)
    except Rejected as r:
        log.warning("%s: cached report ignored (%s): %s", agent_id, r.reason, r.detail)
        return out
    out.report, out.report_payload = rep, raw
    if rep.ok:
        age = state.last_good_age(rep, wall_now, trust_offset_s)
        if age is None:
            log.info(
                "%s: the last good sync's age cannot be known (another boot, or the clock "
                "moved since): not trustworthy until the next good sync",
                agent_id,
            )
        else:
            out.last_good = LastGood(time.monotonic() - age, residual_offset(rep), rep)
    return out


# --- the local status file ------------------------------------------------------------------


@dataclass(frozen=True)
class LastGood:
    """The last good sync: when (monotonic), the |offset| left after the discipline, the report."""

    monotonic: float
    residual_s: float
    report: Report


def residual_offset(report: Report) -> float:
    """|offset| left after the discipline: a step (chrony, system-step) removes it; observe
    and slew leave it (a slew takes a while)."""
    if report.discipline in ("system-step", "chrony"):
        return 0.0
    return abs(report.offset_s or 0.0)


def local_status(
    *,
    agent: str,
    region: str | None,
    report: Report | None,
    last_good: LastGood | None,
    poll_interval_s: float,
    trust_offset_s: float,
    timezone: str | None,
    counters: Mapping[str, int],
    now: datetime,
    monotonic: float,
) -> dict[str, Any]:
    """What status.json says: can a local reader (a PBX) trust this host's clock now?

    Trustworthy while the last good sync is within 2 x the poll interval and the offset left
    after the discipline is within `trust_offset_s`; otherwise `reason` says why. The file
    also says until when (`valid_until`), so a reader can judge a file nobody rewrote.
    """
    server = report.server if report else None
    out: dict[str, Any] = {
        "agent": agent,
        "synced": bool(report and report.ok),
        "trustworthy": False,
        "region": region,
        "list_version": report.list_version if report else None,
        "offset_s": report.offset_s if report else None,
        "server": f"{server.host}:{server.port}" if server else None,
        "at": utcnow_iso(report.at) if report else None,
        "timezone": report.timezone if report else timezone,
        "discipline": report.discipline if report else None,
        "counters": dict(counters),
        "written_at": utcnow_iso(now),
    }
    if last_good is None:
        if report is not None and report.ok:
            out["reason"] = (
                f"last good sync at {utcnow_iso(report.at)} was before a restart, and its age "
                "cannot be known (another boot, or the wall clock moved since): waiting for "
                "the next good sync"
            )
        else:
            out["reason"] = report.error if report and report.error else "never synced"
        return out
    limit = 2 * poll_interval_s
    age = monotonic - last_good.monotonic
    out["last_good_at"] = utcnow_iso(last_good.report.at)
    out["valid_until"] = utcnow_iso(now + timedelta(seconds=limit - age))
    if age > limit:
        out["reason"] = f"last good sync {age:.0f} s ago (limit 2 x poll = {limit:.0f} s)"
    elif last_good.residual_s > trust_offset_s:
        out["reason"] = (
            f"offset {last_good.residual_s:.3f} s after discipline exceeds {trust_offset_s:g} s"
        )
    else:
        out["trustworthy"] = True
        if report is not None and not report.ok:
            out["note"] = f"last sync failed ({report.error}); last good sync still recent"
    return out
