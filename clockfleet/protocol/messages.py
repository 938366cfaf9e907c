"""Message types of the wire contract, field for field.

Field names are the contract: other programs and dashboards read them. Bounds that JSON
libraries do not enforce by themselves (2^70 as a version, 1e308 as an offset) are declared
here as msgspec constraints and checked on every decode.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Optional, Union

import msgspec

from clockfleet.protocol.ids import ID_PATTERN

MAX_SERVERS = 64
MAX_TRIED = 64
MAX_VERSION = 2**53 - 1
MAX_OFFSET_S = 2.0**31
MIN_POLL_INTERVAL_S = 16  # RFC 4330 §10: never poll a server more often than this
MAX_POLL_INTERVAL_S = 7 * 86400
MAX_RESYNC_JITTER_S = 3600

SERVERS_SCHEMA = "clock.servers/1"
# A list naming an NTS server goes out as /2: an agent that predates NTS refuses the whole
# list (wrong schema) rather than ask that server in plain NTP (docs/protocol.md).
SERVERS_NTS_SCHEMA = "clock.servers/2"
SERVER_ENTRY_KEYS = ("host", "port", "nts", "nts_ke_port")  # what a /2 entry may hold
PROFILE_SCHEMA = "clock.profile/1"
STATUS_SCHEMA = "clock.status/1"
REPORT_SCHEMA = "clock.report/1"
CMD_SCHEMA = "clock.cmd/1"

Id = Annotated[str, msgspec.Meta(pattern=f"^{ID_PATTERN}\\Z")]  # not `$`: it admits "id\\n"
Version = Annotated[int, msgspec.Meta(ge=0, le=MAX_VERSION)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Host = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
ZoneName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
MAX_TEXT = 256  # free text in reports and status: detail, error, note, software
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
Seconds = Annotated[float, msgspec.Meta(gt=-MAX_OFFSET_S, lt=MAX_OFFSET_S)]
NonNegSeconds = Annotated[float, msgspec.Meta(ge=0, lt=MAX_OFFSET_S)]
PollInterval = Annotated[int, msgspec.Meta(ge=MIN_POLL_INTERVAL_S, le=MAX_POLL_INTERVAL_S)]
Jitter = Annotated[int, msgspec.Meta(ge=0, le=MAX_RESYNC_JITTER_S)]

Outcome = Literal[
    "ok",
    "timeout",
    "unresolvable",
    "unreachable",
    "kod-rate",
    "kod-deny",
    "kod-rstr",
    "kod-other",
    "unsynchronised",
    "bad-stratum",
    "bad-origin",
    "bad-packet",
    "too-far",
    "panic-offset",
    "falseticker",
    "not-tried",
    # NTS (docs/nts.md): the server's NTS-KE refused us or answered badly, its certificate
    # is not one we trust for its name, its NTS-KE answer held no cookie, an NTP answer did
    # not authenticate (or was an NTS NAK).
    "nts-ke-refused",
    "nts-bad-certificate",
    "nts-no-cookies",
    "nts-auth-failed",
]
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]

Discipline = Literal["observe", "chrony", "timesyncd", "system-step", "system-slew", "none"]
DISCIPLINES: tuple[str, ...] = Discipline.__args__  # type: ignore[attr-defined]


class _Msg(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    pass


class _FrozenMsg(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False, frozen=True):
    """The parts of a message that are values (hashable): servers, signatures, canaries."""


class Server(_FrozenMsg, frozen=True):
    host: Host
    port: Port = 123
    # Ask this server only with NTS (RFC 8915): NTS-KE on nts_ke_port (None: 4460), then
    # authenticated NTP. Only in clock.servers/2 lists (codec.py checks it).
    nts: bool = False
    nts_ke_port: Optional[Port] = None


class Signature(_FrozenMsg, frozen=True):
    alg: Literal["ed25519"]
    key_id: Id
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
CanaryPercent = Annotated[float, msgspec.Meta(gt=0, le=100)]
MAX_BAKE_S = 7 * 86400
Digest = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}\\Z")]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_VERSION)]


class Canary(_FrozenMsg, frozen=True):
    """A list change being tried on a cohort of the region's agents (docs/rollout.md).

    Agents in the cohort (`clockfleet.protocol.rollout.in_cohort`) use `servers` from here;
    every other agent, and every agent that predates the field, keeps the list's `servers`.
    The decision's parameters travel with it, signed, so whoever continues the rollout after
    a restart, and `clockfleet rollout status` on any host, read the same ones."""

    id: Id  # the change: cohort membership hashes it with the agent id
    percent: CanaryPercent
    servers: Annotated[list[Server], msgspec.Meta(min_length=1, max_length=MAX_SERVERS)]
    bake_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_BAKE_S)]
    max_failing_pct: Percent
    min_reported_pct: Percent
    offset_tolerance_s: Annotated[float, msgspec.Meta(gt=0, le=3600)]


class ZoneCanary(_FrozenMsg, frozen=True):
    """A change of the region's default time zone tried on a cohort first (docs/rollout.md).

    Agents take no zone from it: the cohort's agents get the new zone in their profiles, and
    the list's own `timezone` stays the current one until the change is promoted, so an
    agent that predates the field ignores it safely. It is the signed state the decision
    reads (publisher, collector, `clockfleet rollout status`): the change, the cohort's
    percentage, the zone tried and the decision's parameters. Never beside a `canary`."""

    id: Id  # the change: cohort membership hashes it with the agent id
    percent: CanaryPercent
    timezone: ZoneName  # the zone tried; the list's `timezone` is the one it replaces
    bake_s: Annotated[int, msgspec.Meta(ge=0, le=MAX_BAKE_S)]
    max_failing_pct: Percent
    min_reported_pct: Percent


class RolloutRecord(_FrozenMsg, frozen=True):
    """How the region's last canary ended; carried by the list that ended it."""

    id: Id
    phase: Literal["promoted", "aborted"]
    reason: Text
    cohort: Count
    reported: Count
    failing: Count
    by: Literal["auto", "operator"] = "auto"


class ServerList(_Msg):
    schema: Literal["clock.servers/1", "clock.servers/2"]
    region: Id
    version: Version
    issued_at: Timestamp
    servers: Annotated[list[Server], msgspec.Meta(min_length=1, max_length=MAX_SERVERS)]
    timezone: Optional[ZoneName] = None
    poll_interval_s: Optional[PollInterval] = None
    resync_jitter_s: Optional[Jitter] = None
    canary: Optional[Canary] = None
    zone_canary: Optional[ZoneCanary] = None
    rollout: Optional[RolloutRecord] = None
    sig: Optional[Signature] = None


class Profile(_Msg):
    schema: Literal["clock.profile/1"]
    agent: Id
    region: Id
    timezone: ZoneName
    version: Version
    issued_at: Timestamp
    sig: Optional[Signature] = None


class Status(_Msg):
    schema: Literal["clock.status/1"]
    agent: Id
    state: Literal["online", "offline"]
    software: Text
    session: Version
    since: Timestamp
    region: Optional[Id] = None


class Tried(_Msg):
    host: Host
    port: Port
    outcome: Outcome
    detail: Optional[Text] = None
    offset_s: Optional[Seconds] = None
    delay_s: Optional[NonNegSeconds] = None
    # How this entry's answers were authenticated: "nts" for an NTS server (its outcome says
    # whether an authenticated answer came); absent for plain NTP.
    auth: Optional[Literal["nts"]] = None


# chronyd starts with a skew of 2,000,000 ppm (no estimate yet): bounds far beyond any clock.
Ppm = Annotated[float, msgspec.Meta(gt=-1e9, lt=1e9)]
MAX_UTC_OFFSET_S = 26 * 3600  # the widest zones are +14:00 and -12:00; a day either way


class KernelClock(_Msg):
    """The kernel's clock discipline state, read with adjtimex (modes 0: read only), as
    node_exporter's `node_timex_*` reads it."""

    synchronised: bool  # adjtimex did not return TIME_ERROR (node_timex_sync_status)
    maxerror_s: NonNegSeconds
    esterror_s: NonNegSeconds
    status: Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)]  # STA_* bits


class ChronyTracking(_Msg):
    """`chronyc -c tracking` of the host's chronyd, in chrony's own signs."""

    reference: Annotated[str, msgspec.Meta(max_length=64)]  # address or refid, printable
    stratum: Annotated[int, msgspec.Meta(ge=0, le=16)]
    system_time_s: Seconds  # correction still to apply: positive, the clock is slow
    last_offset_s: Seconds  # local minus true at the last update
    rms_offset_s: NonNegSeconds
    frequency_ppm: Ppm  # positive: the clock runs fast
    skew_ppm: Annotated[float, msgspec.Meta(ge=0, lt=1e9)]
    root_delay_s: NonNegSeconds
    root_dispersion_s: NonNegSeconds
    update_interval_s: NonNegSeconds
    leap: Literal["normal", "insert", "delete", "unsynchronised"]


class TimesyncdState(_Msg):
    """systemd-timesyncd's own word: it touches /run/systemd/timesync/synchronized on each
    successful synchronisation."""

    synchronised: bool
    last_sync_at: Optional[Timestamp] = None


class ClockState(_Msg):
    """What the discipline achieved, read after it ran (docs/protocol.md): the kernel's view
    on every backend, chronyd's or timesyncd's own for theirs; `error` says what could not
    be read."""

    kernel: Optional[KernelClock] = None
    chrony: Optional[ChronyTracking] = None
    timesyncd: Optional[TimesyncdState] = None
    error: Optional[Text] = None


class ZoneCommand(_Msg):
    """The operator's command run after the agent changed the host's zone (agent.yaml
    `zone_change_command`): carried by every report until the next change."""

    timezone: ZoneName  # the zone it was run for
    at: Timestamp
    timed_out: bool
    duration_s: NonNegSeconds
    exit_code: Optional[Annotated[int, msgspec.Meta(ge=-255, le=255)]] = None
    error: Optional[Text] = None  # why it did not run or failed, with its output's tail


MAX_TIME_SETTERS = 32


class TimeSetter(_Msg):
    """Something else on the host that sets its clock: a cron job, a script, a timer or
    service, a second time daemon (the agent's time_setters.py; docs/hosts.md)."""

    kind: Literal["cron", "script", "timer", "service", "daemon"]
    program: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]  # "ntpdate", "ntpd"
    source: Text  # where: "/etc/cron.d/ntpdate:2", "ntp.service"


# wide: one field per field of the wire contract's clock.report/1; a reader of the contract
# finds them all here, as the other messages are.
class Report(_Msg):
    schema: Literal["clock.report/1"]
    agent: Id
    region: Id
    list_version: Version
    ok: bool
    discipline: Discipline
    at: Timestamp
    tried: Annotated[list[Tried], msgspec.Meta(max_length=MAX_TRIED)]
    server: Optional[Server] = None
    offset_s: Optional[Seconds] = None
    delay_s: Optional[NonNegSeconds] = None
    stratum: Optional[Annotated[int, msgspec.Meta(ge=0, le=16)]] = None
    leap: Optional[Annotated[int, msgspec.Meta(ge=0, le=3)]] = None
    # root delay / 2 + root dispersion of the chosen server: with |offset| it bounds the error.
    root_distance_s: Optional[NonNegSeconds] = None
    timezone: Optional[ZoneName] = None
    profile_version: Optional[Version] = None
    software: Optional[Text] = None
    error: Optional[Text] = None
    # What the agent wants an operator to know about a good sync, e.g. that a single-server
    # list, or a large offset no later server could confirm, was applied unconfirmed.
    note: Optional[Text] = None
    # Which list content was applied (rollout.list_digest of the servers probed), and for a
    # list with a canary: which side of it this agent is on, and the change's id.
    list_digest: Optional[Digest] = None
    cohort: Optional[Literal["canary", "rest"]] = None
    change: Optional[Id] = None
    # Added later, all optional (docs/protocol.md, "How the contract evolves"): what the
    # discipline achieved, the zone the profile or list asks for (`timezone` is the one the
    # host has), the host's tzdata version and the UTC offset its own rules give its zone at
    # `at`, and the zone-change command's last result.
    clock: Optional[ClockState] = None
    timezone_expected: Optional[ZoneName] = None
    tzdata_version: Optional[Annotated[str, msgspec.Meta(pattern="^[0-9A-Za-z.+_-]{1,32}\\Z")]] = (
        None
    )
    utc_offset_s: Optional[
        Annotated[int, msgspec.Meta(ge=-MAX_UTC_OFFSET_S, le=MAX_UTC_OFFSET_S)]
    ] = None
    zone_command: Optional[ZoneCommand] = None
    # Other time setters the agent found on its host ([] when it looked and found none;
    # absent when it did not look).
    time_setters: Optional[
        Annotated[list[TimeSetter], msgspec.Meta(max_length=MAX_TIME_SETTERS)]
    ] = None


class Command(_Msg):
    schema: Literal["clock.cmd/1"]
    command: Literal["resync"]
    issued_at: Optional[Timestamp] = None


Message = Union[ServerList, Profile, Status, Report, Command]


def clip_text(text: Optional[str]) -> Optional[str]:
    """Free text cut to what a report may carry (MAX_TEXT), marked with an ellipsis."""
    if text is None or len(text) <= MAX_TEXT:
        return text
    return text[: MAX_TEXT - 1] + "…"
