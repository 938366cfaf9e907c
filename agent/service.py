"""One agent: follow a region's signed server list and a profile, sync, report.

An `Agent` is a plain object with no thread of its own and no global state. It owns a paho
client but never runs paho's loop: a host (`clockfleet.agent.fleet.Fleet`) drives the
socket, fires its timers and runs its blocking work (the NTP probe, the clock backend, the
time zone) off the network thread. So one process can hold one agent (the service, `--once`)
or thousands (the fleet simulator, the benchmarks) on one selector loop.

The host interface an agent uses (all called on the host's loop thread):

    host.call_later(delay_s, fn) -> handle with .cancel()
    host.run_blocking(fn, done)   # fn() on a worker; done(result, error) back on the loop
    host.watch(client)            # route this paho client's socket through the loop

Flow: subscribe (on every connect) to agents/{id}/profile, agents/{id}/cmd and
regions/{region}/servers; accept a payload only when it decodes strictly, carries a trusted
signature (when trust keys are configured) and a version newer than the last applied one;
anything else is logged with its reason, counted in `counters` and ignored, the last good
list and profile staying in force. A new list or profile -> sync after 0..resync_jitter_s;
then every poll_interval_s (jittered); failures retry with capped exponential backoff.
Every sync publishes a retained QoS 1 `clock.report/1` and rewrites the local status file.

Status: on every connect a retained `online` with session = previous + 1 (kept in the state
dir, or learnt from the agent's own retained status when there is none), a last will
`offline` with the same session, and `offline` on a clean stop. Reports made while the broker
is away are kept (the latest REPORT_BACKLOG) and sent on reconnect; paho resends those in
flight (persistent session, client id `clockfleet-agent-{id}`).
"""

from __future__ import annotations

import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt

from clockfleet import __version__
from clockfleet.agent import schedule
from clockfleet.agent.state import (
    LastGood,
    Remembered,
    StateDir,
    local_status,
    residual_offset,
)
from clockfleet.protocol import codec, signing, topics
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.connection import (
    ConnectionSettings,
    cert_time_checked,
    is_cert_time_error,
    new_client,
    rotation,
    set_cert_time_check,
    tls_context,
)
from clockfleet.protocol.messages import (
    MAX_OFFSET_S,
    MAX_TRIED,
    Command,
    Profile,
    Report,
    Server,
    ServerList,
    Status,
    Tried,
)

log = logging.getLogger("clockfleet.agent")

REPORT_BACKLOG = 16  # reports kept while the broker is away; the oldest go first
MAX_TEXT = 256


class Host(Protocol):
    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Any: ...
    def run_blocking(
        self, fn: Callable[[], Any], done: Callable[[Any, BaseException | None], None]
    ) -> None: ...
    def watch(self, client: mqtt.Client) -> None: ...


@dataclass
class AgentSettings:
    agent_id: str
    region: str | None = None  # fallback until a profile names one
    timezone: str | None = None  # fallback after profile and list
    trust: signing.TrustStore = field(default_factory=signing.TrustStore)
    probe_settings: Any = None  # ProbeSettings; None: the probe's defaults
    tz_root: Path | None = None  # None: never touch a time zone
    use_timedatectl: bool | None = None
    startup_delay_s: float = 0.0
    poll_interval_s: float = 3600.0
    resync_jitter_s: float = 30.0
    retry_min_s: float = 16.0
    retry_max_s: float = 1024.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    trust_offset_s: float = 0.5
    keepalive_s: int = 30
    profile_grace_s: float = 2.0
    # `cmd` resync: at most one per this many seconds (RFC 4330's floor), and a command
    # older than cmd_max_age_s (queued while the agent was away) is dropped, once this
    # host's clock is good enough to tell its age.
    cmd_min_interval_s: float = 16.0
    cmd_max_age_s: float = 300.0
    software: str = __version__


@dataclass
class SyncJob:
    """A snapshot of what one sync works from (the loop may apply a new list meanwhile)."""

    server_list: ServerList
    profile: Profile | None
    timezone: str | None
    first_sync: bool = False  # no good sync yet since start: the panic limit is waived


@dataclass
class SyncOutcome:
    result: Any  # ProbeResult
    applied: Any  # Applied | None
    timezone: str | None
    tz_error: str | None
    error: str | None


def _clip(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _seconds(value: float | None) -> float | None:
    """A number the report may carry (|x| < 2^31), else None: a report is never refused."""
    if value is None or value != value or abs(value) >= MAX_OFFSET_S:
        return None
    return float(value)


def build_report(
    agent_id: str, job: SyncJob, o: SyncOutcome, wall_now: float, software: str
) -> Report:
    """The `clock.report/1` of one sync, checked against the strict decoder before it goes
    out: readers must never refuse what an agent publishes."""
    res = o.result
    tried = []
    for a in res.tried if res is not None else []:
        s = a.sample
        tried.append(
            Tried(
                host=a.host,
                port=a.port,
                outcome=a.outcome,
                detail=_clip(a.detail),
                offset_s=_seconds(s.offset_s) if s else None,
                delay_s=_seconds(s.delay_s) if s and s.delay_s >= 0 else None,
            )
        )
    ok = bool(res is not None and res.ok and o.applied is not None and o.applied.ok)
    at = wall_now
    fields: dict[str, Any] = {}
    if ok:
        s = res.chosen.sample
        fields = {
            "server": Server(res.chosen.host, res.chosen.port),
            "offset_s": _seconds(s.offset_s),
            "delay_s": _seconds(max(s.delay_s, 0.0)),
            "stratum": s.stratum,
            "leap": s.leap,
            "root_distance_s": _seconds(max(s.root_distance_s, 0.0)),
        }
        if o.applied.discipline == "observe" and fields["offset_s"] is not None:
            at += fields["offset_s"]  # `at` is written from the corrected clock
    errors = [e for e in (o.error, o.tz_error) if e]
    report = Report(
        schema="clock.report/1",
        agent=agent_id,
        region=job.server_list.region,
        list_version=job.server_list.version,
        ok=ok,
        discipline=o.applied.discipline if ok else "none",
        at=datetime.fromtimestamp(at, timezone.utc),
        tried=tried[:MAX_TRIED],
        timezone=o.timezone,
        profile_version=job.profile.version if job.profile else None,
        software=_clip(software),
        error=_clip("; ".join(errors)) if errors else None,
        note=_clip(res.note) if ok and res.note else None,
        **fields,
    )
    try:
        # No future rule: `at` is the corrected time, while this host's clock may be far off.
        codec.decode(Report, codec.encode(report), topic_id=agent_id, check_future=False)
    except Rejected as r:
        # Our own bug; never publish what readers would refuse.
        log.error("%s: built an invalid report (%s): %s", agent_id, r.reason, r.detail)
        report = Report(
            schema="clock.report/1",
            agent=agent_id,
            region=job.server_list.region,
            list_version=job.server_list.version,
            ok=False,
            discipline="none",
            at=datetime.fromtimestamp(wall_now, timezone.utc),
            tried=[],
            error=_clip(f"internal: invalid report ({r.reason}: {r.detail})"),
        )
    return report


class Agent:
    """See the module docstring. Only the host's loop thread may call its methods."""

    def __init__(
        self,
        settings: AgentSettings,
        conn: ConnectionSettings,
        *,
        backend: Any,
        probe_fn: Callable[..., Any] | None = None,
        kod: Any = None,
        state: StateDir | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
        once: bool = False,
        client_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.id = settings.agent_id
        self.conn = conn
        self.prefix = conn.prefix
        self.backend = backend
        if probe_fn is None or kod is None:
            from clockfleet.agent import probe as probe_mod

            probe_fn = probe_fn or probe_mod.probe
            kod = kod if kod is not None else probe_mod.KodMemory()
        self.probe_fn = probe_fn
        self.kod = kod
        self.state = state
        self.rng = rng or random.Random()
        self.wall_clock = wall_clock
        self.once = once
        self.host: Host | None = None

        # what is in force
        self.server_list: ServerList | None = None
        self.list_payload: bytes | None = None
        self.profile: Profile | None = None
        self.profile_payload: bytes | None = None
        self.memory = Remembered()
        self.list_region: str | None = None  # the region whose list topic we follow

        # counters: rejection reasons plus a few events; status.json exposes them
        self.counters: collections.Counter[str] = collections.Counter()
        self.last_report: Report | None = None
        self.last_report_payload: bytes | None = None
        self.reports_made = 0
        self.reports_acked = 0
        self.on_report: Callable[[Agent, Report], None] | None = None  # observers (benchmarks)

        # sync scheduling
        self._started = False
        self._startup_done = False
        self._sync_timer: Any = None
        self._sync_due: float = float("inf")
        self._syncing = False
        self._sync_again = False
        self._failures = 0
        self._last_good: LastGood | None = None
        self._stale_timer: Any = None
        # A good sync since start left this host's clock within the panic limit: from then
        # on the limit stands, certificates' dates are checked and command ages judged.
        self._clock_known_good = False
        self._last_cmd: float | None = None  # monotonic time of the last command obeyed

        # connection
        self.connected = False
        self.stopping = False
        self._brokers = rotation(conn.brokers)
        self._broker_index = 0
        self._connect_attempt = 0
        self._connect_timer: Any = None
        self._connack_timer: Any = None
        self._connecting = False  # paho's connect() is running on a worker
        self._pending_session: int | None = None
        self._refused: str | None = None
        self._backlog: collections.deque[bytes] = collections.deque(maxlen=REPORT_BACKLOG)
        self._report_mids: set[int] = set()
        self._sub_mids: dict[int, list[str]] = {}
        self._barrier_mid: int | None = None

        # --once bookkeeping
        self.settled = False  # retained profile/list seen (or known absent)
        # No remembered session (a lost or absent state dir): learn it from our own retained
        # status before announcing `online`, so the counter never goes backwards.
        self._learning_session = False
        self._seen_session: int | None = None
        self._quiet_reconnect = False
        self._grace_pending = False
        self.unreachable: str | None = None  # why no broker could be reached
        self.finished = False
        self.fatal: str | None = None

        self._t_profile = topics.profile_topic(self.prefix, self.id)
        self._t_cmd = topics.cmd_topic(self.prefix, self.id)
        self._t_status = topics.status_topic(self.prefix, self.id)
        self._t_report = topics.report_topic(self.prefix, self.id)
        self._list_prefix = f"{self.prefix}/regions/"

        cid = client_id or (f"clockfleet-agent-{self.id}" + ("-once" if once else ""))
        # A persistent session (service): QoS 1 reports in flight survive a reconnect. --once
        # uses its own client id and a clean session so it never takes over the service's.
        self._tls = tls_context(conn) if any(b.tls for b in conn.brokers) else None
        self.client = new_client(conn, cid, clean_session=once, ssl_context=self._tls)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # --- properties ------------------------------------------------------------------------

    @property
    def region(self) -> str | None:
        """The region this agent belongs to: its profile's, else the configured fallback."""
        if self.profile is not None:
            return self.profile.region
        return self.settings.region

    @property
    def poll_interval_s(self) -> float:
        sl = self.server_list
        if sl is not None and sl.poll_interval_s is not None:
            return float(sl.poll_interval_s)
        return self.settings.poll_interval_s

    @property
    def resync_jitter_s(self) -> float:
        sl = self.server_list
        if sl is not None and sl.resync_jitter_s is not None:
            return float(sl.resync_jitter_s)
        return self.settings.resync_jitter_s

    def desired_timezone(self) -> str | None:
        if self.profile is not None:
            return self.profile.timezone
        if self.server_list is not None and self.server_list.timezone is not None:
            return self.server_list.timezone
        return self.settings.timezone

    # --- lifecycle -------------------------------------------------------------------------

    def attach(self, host: Host) -> None:
        self.host = host
        host.watch(self.client)

    def start(self) -> None:
        """Load the cache, connect, and arm the start-up delay (RFC 4330: randomised)."""
        assert self.host is not None, "attach() the agent to a host first"
        self._started = True
        self._load_cache()
        self._learning_session = not self.once and self.memory.session == 0
        self._connect()
        if self.once:
            return  # --once syncs when the retained state has settled (or from the cache)
        self._write_status()
        delay = schedule.startup_delay(self.rng, self.settings.startup_delay_s)
        if delay > 0:
            log.info("%s: start-up delay %.1f s before the first sync", self.id, delay)
        self.host.call_later(delay, self._startup_elapsed)

    def stop(self) -> None:
        """Clean shutdown: publish `offline` with this session, then disconnect."""
        self.stopping = True
        for t in (self._sync_timer, self._connect_timer, self._connack_timer, self._stale_timer):
            if t is not None:
                t.cancel()
        if self.connected:
            if not self.once:
                self._publish_status("offline", self.memory.session)
            self.client.disconnect()
        elif self.client.socket() is not None:
            self.client.disconnect()

    @property
    def closed(self) -> bool:
        return self.client.socket() is None

    def _startup_elapsed(self) -> None:
        self._startup_done = True
        if self.server_list is not None:
            self._sync_at(0.0, "start-up")
        else:
            log.info("%s: no server list yet; waiting for region %s", self.id, self.region)

    # --- cache -----------------------------------------------------------------------------

    def _load_cache(self) -> None:
        if self.state is None:
            return
        self.memory = self.state.load_remembered()
        raw = self.state.load_profile_payload()
        if raw:
            try:
                prof, obj = codec.decode(Profile, raw, topic_id=self.id)
                if self.settings.trust:
                    signing.verify(obj, self.settings.trust)
                self.profile, self.profile_payload = prof, raw
            except Rejected as r:
                self._count(r.reason)
                log.warning("%s: cached profile refused (%s): %s", self.id, r.reason, r.detail)
        if not self.once:
            self._restore_last_report()
        raw = self.state.load_list_payload()
        if raw:
            try:
                sl, obj = codec.decode(ServerList, raw)
                if self.settings.trust:
                    signing.verify(obj, self.settings.trust)
                self.server_list, self.list_payload = sl, raw
                log.info(
                    "%s: cached list v%d of region %s loaded (%d servers)",
                    self.id,
                    sl.version,
                    sl.region,
                    len(sl.servers),
                )
            except Rejected as r:
                self._count(r.reason)
                log.warning("%s: cached list refused (%s): %s", self.id, r.reason, r.detail)

    def _restore_last_report(self) -> None:
        """The last report before a restart: a sync that is still recent keeps the host
        trustworthy in status.json until it goes stale, instead of flapping on restart."""
        assert self.state is not None
        raw = self.state.load_report()
        if not raw:
            return
        try:
            rep, _ = codec.decode(Report, raw, topic_id=self.id, check_future=False)
        except Rejected as r:
            log.warning("%s: cached report ignored (%s): %s", self.id, r.reason, r.detail)
            return
        self.last_report, self.last_report_payload = rep, raw
        if not rep.ok:
            return
        age = self.state.last_good_age(rep, self.wall_clock(), self.settings.trust_offset_s)
        if age is None:
            log.info(
                "%s: the last good sync's age cannot be known (another boot, or the clock "
                "moved since): not trustworthy until the next good sync",
                self.id,
            )
            return
        self._last_good = LastGood(time.monotonic() - age, residual_offset(rep), rep)

    def _save_memory(self) -> None:
        if self.state is not None:
            self.state.save_remembered(self.memory)

    # --- connection ------------------------------------------------------------------------

    def _connect(self) -> None:
        self._connect_timer = None
        if self.stopping or self.connected or self._connecting:
            return
        addr = self._brokers[self._broker_index % len(self._brokers)]
        self._broker_index += 1
        self._pending_session = self.memory.session + 1
        if not self.once:
            # The will carries the session this connection will announce as online.
            self.client.will_set(
                self._t_status, self._status_payload("offline", self._pending_session), 1, True
            )
        # Resolving the name, the TCP connect and the TLS handshake block (paho bounds the
        # last two by its connect timeout, nothing bounds the first): on a worker, so a
        # slow broker name never stalls the loop and every other agent on it.
        self._connecting = True
        keepalive = self.settings.keepalive_s
        assert self.host is not None
        self.host.run_blocking(
            lambda: self.client.connect(addr.host, addr.port, keepalive=keepalive),
            lambda _result, exc: self._connect_returned(addr, exc),
        )

    def _connect_returned(self, addr: Any, exc: BaseException | None) -> None:
        self._connecting = False
        if self.stopping:
            if exc is None:
                self.client.disconnect()
            return
        if exc is not None:
            if self._tls is not None and is_cert_time_error(exc) and self._waive_cert_time(exc):
                self._connect_timer = self._call_later(0.0, self._connect)
                return
            self._connect_failed(f"{addr}: {exc}")
            return
        timeout = self.conn.connect_timeout_s
        self._connack_timer = self._call_later(timeout, lambda: self._no_connack(str(addr)))

    def _waive_cert_time(self, exc: BaseException) -> bool:
        """A certificate "not yet valid" or "expired" at a clock not yet synced: the clock,
        not the certificate, is the likelier culprit. Verify the chain without its dates
        until the first good sync (chrony's nocerttimecheck); True when newly waived."""
        assert self._tls is not None
        if self._clock_known_good or not cert_time_checked(self._tls):
            return False
        set_cert_time_check(self._tls, False)
        self.counters["tls-time-check-waived"] += 1
        log.warning(
            "%s: broker certificate refused at this host's clock (%s), which may be far off: "
            "verifying the chain without its validity dates until the first good sync",
            self.id,
            getattr(exc, "verify_message", exc),
        )
        return True

    def _no_connack(self, addr: str) -> None:
        self._connack_timer = None
        if not self.connected and not self.stopping:
            self._refused = f"{addr}: no CONNACK within {self.conn.connect_timeout_s:g} s"
            self.client.disconnect()
            if self._connect_timer is None:  # on_disconnect may have scheduled it already
                self._connect_failed(self._refused)
            self._refused = None

    def _connect_failed(self, why: str) -> None:
        self._connect_attempt += 1
        self.counters["connect-failures"] += 1
        if self.once:
            if self._connect_attempt >= len(self._brokers):
                self._give_up_broker(why)
            else:
                self._connect_timer = self._call_later(0.0, self._connect)
            return
        delay = schedule.reconnect_delay(
            self.rng,
            self._connect_attempt - 1,
            self.settings.reconnect_min_s,
            self.settings.reconnect_max_s,
        )
        log.warning("%s: broker unreachable (%s); retrying in %.1f s", self.id, why, delay)
        self._connect_timer = self._call_later(delay, self._connect)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connack_timer is not None:
            self._connack_timer.cancel()
            self._connack_timer = None
        if reason_code.is_failure:
            # paho closes the socket and calls on_disconnect, which schedules the retry
            self._refused = f"broker refused the connection: {reason_code}"
            log.error("%s: %s", self.id, self._refused)
            return
        self.connected = True
        self._connect_attempt = 0
        if not self.once:  # --once announces no status, so it takes no session number
            self.memory.session = self._pending_session or self.memory.session + 1
            self._save_memory()
        log.info(
            "%s: connected to %s:%s%s",
            self.id,
            client.host,
            client.port,
            "" if self.once else f" (session {self.memory.session})",
        )
        self._subscribe_all()
        if self._learning_session:
            self._subscribe([self._t_status])
            self._barrier()  # online is announced once the retained status has been seen
        elif not self.once:
            self._publish_status("online", self.memory.session)
        while self._backlog:
            self._send_report(self._backlog.popleft())

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected
        self.connected = False
        self._barrier_mid = None
        self._sub_mids.clear()
        if self.stopping:
            return
        if self._quiet_reconnect:
            self._quiet_reconnect = False
            self._connect_timer = self._call_later(0.0, self._connect)
            return
        if was:
            self.counters["broker-lost"] += 1
            log.warning("%s: broker lost (%s); reconnecting", self.id, reason_code)
        if self._connect_timer is None:
            why = self._refused or f"disconnected: {reason_code}"
            self._refused = None
            if was:
                self._connect_attempt = 0
            self._connect_failed(why)

    def _give_up_broker(self, why: str) -> None:
        """--once: no broker answered. Sync from the cache if there is one."""
        self.unreachable = why
        if self.server_list is None:
            self.fatal = f"broker unreachable and no cached server list ({why})"
            self.finished = True
            return  # the caller prints `fatal` as its one line
        log.warning("%s: no broker reachable: %s", self.id, why)
        log.info("%s: syncing from the cached list", self.id)
        self.settled = True
        self._sync_at(0.0, "cached list")

    # --- subscriptions ---------------------------------------------------------------------

    def _subscribe_all(self) -> None:
        wanted = [self._t_profile]
        region = self.region
        if region is not None:
            wanted.append(topics.servers_topic(self.prefix, region))
        self.list_region = region
        if not self.once:
            wanted.append(self._t_cmd)
        self._subscribe(wanted)
        if self.once:
            self._barrier()

    def _subscribe(self, wanted: list[str]) -> None:
        rc, mid = self.client.subscribe([(t, 1) for t in wanted])
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._sub_mids[mid] = wanted
            # A NATS node that just lost a peer can leave a SUBSCRIBE unanswered: ask again.
            self._call_later(self.conn.connect_timeout_s, lambda: self._no_suback(mid))

    def _no_suback(self, mid: int) -> None:
        wanted = self._sub_mids.pop(mid, None)
        if wanted is None or not self.connected or self.stopping:
            return
        self.counters["subscribe-failures"] += 1
        log.warning("%s: no SUBACK for %s; subscribing again", self.id, ", ".join(wanted))
        self._subscribe(wanted)

    def _barrier(self) -> None:
        """A second SUBSCRIBE whose SUBACK proves the first one's retained messages are in.

        The broker handles packets in order and queues a subscription's retained messages
        while handling it, so when this SUBACK arrives they have arrived before it. The
        topic is our own cmd topic (never retained): harmless to subscribe.
        """
        rc, mid = self.client.subscribe(self._t_cmd, 1)
        self._barrier_mid = mid if rc == mqtt.MQTT_ERR_SUCCESS else None

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        wanted = self._sub_mids.pop(mid, None)
        if failed and wanted is not None:
            # NATS can refuse a SUBSCRIBE for a few seconds after a node dies: retry.
            self.counters["subscribe-failures"] += 1
            log.warning("%s: subscribe refused (%s); retrying", self.id, failed[0])
            self._call_later(
                schedule.reconnect_delay(self.rng, 1, 1.0, 4.0),
                lambda: self.connected and self._subscribe(wanted),
            )
        if mid == self._barrier_mid:
            self._barrier_mid = None
            if self._learning_session:
                self._session_learned()
            else:
                self._once_settled()

    def _switch_region(self, region: str) -> None:
        old = self.list_region
        if old == region:
            return
        self.list_region = region
        if not self.connected:
            return
        if old is not None:
            self.client.unsubscribe(topics.servers_topic(self.prefix, old))
        self._subscribe([topics.servers_topic(self.prefix, region)])
        if self.once and not self.settled:
            self._barrier()

    def _on_own_status(self, payload: bytes) -> None:
        if not payload or not self._learning_session:
            return
        try:
            status, _ = codec.decode(Status, payload, topic_id=self.id)
        except Rejected as r:
            self._reject("own retained status", r.reason, r.detail)
            return
        self._seen_session = max(self._seen_session or 0, status.session)

    def _session_learned(self) -> None:
        """The retained status (if any) is in: go on from its session, never below it."""
        self._learning_session = False
        self.client.unsubscribe(self._t_status)
        seen = self._seen_session
        if seen is None or seen < self.memory.session:
            self._publish_status("online", self.memory.session)
            return
        # This connection's will already carries a session that is too low: reconnect so
        # that will and online both carry seen + 1.
        log.info("%s: session counter recovered from the broker: %d", self.id, seen)
        self.memory.session = seen
        self._save_memory()
        self._quiet_reconnect = True
        self.client.disconnect()

    # --- incoming --------------------------------------------------------------------------

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        # Whatever a payload does to a handler, paho must go on to acknowledge it (QoS 1):
        # an exception escaping here would leave it unacknowledged and redelivered forever.
        try:
            self._dispatch(msg)
        except Exception:
            self.counters["handler-errors"] += 1
            log.exception("%s: handling a message on %r failed; ignored", self.id, msg.topic)

    def _dispatch(self, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic == self._t_profile:
            self._on_profile(msg.payload)
        elif topic == self._t_cmd:
            self._on_cmd(msg.payload)
        elif topic == self._t_status:
            self._on_own_status(msg.payload)
        elif topic.startswith(self._list_prefix):
            try:
                ref = topics.parse_topic(self.prefix, topic)
            except topics.TopicError as exc:
                self._reject("list", "bad-topic", str(exc))
                return
            if ref.ident != self.list_region:
                log.debug(
                    "%s: ignoring list of region %s (following %s)",
                    self.id,
                    ref.ident,
                    self.list_region,
                )
                return
            self._on_list(ref.ident, msg.payload)
        else:
            self._reject("message", "bad-topic", f"unexpected topic {topic!r}")

    def _reject(self, what: str, reason: str, detail: str) -> None:
        self._count(reason)
        log.warning("%s: rejected %s: %s: %s", self.id, what, reason, detail)

    def _count(self, reason: str) -> None:
        self.counters[reason] += 1

    def _verified(self, what: str, cls: type, payload: bytes, topic_id: str) -> Any:
        # Agents sharing a process (a fleet) receive the same bytes: one Ed25519 check
        # (~0.2 ms) serves them all, as it would on separate hosts running in parallel.
        cache = getattr(self.host, "verified", None)
        key = (cls, topic_id, payload, id(self.settings.trust))
        if cache is not None and (hit := cache.get(key)) is not None:
            trust, msg = hit
            if trust is self.settings.trust:
                return msg
        try:
            msg, obj = codec.decode(cls, payload, topic_id=topic_id)
            if self.settings.trust:
                signing.verify(obj, self.settings.trust)
        except Rejected as r:
            self._reject(what, r.reason, r.detail)
            return None
        if cache is not None:
            cache.put(key, (self.settings.trust, msg))
        return msg

    def _on_list(self, region: str, payload: bytes) -> None:
        if not payload:
            self.counters["withdrawn"] += 1
            log.warning(
                "%s: list of region %s withdrawn on the broker; keeping the last good one (%s)",
                self.id,
                region,
                f"v{self.server_list.version}" if self.server_list else "none",
            )
            return
        if payload == self.list_payload:
            return  # the same list again (a reconnect's retained copy): nothing new
        sl = self._verified(f"list for region {region}", ServerList, payload, region)
        if sl is None:
            return
        last = self.memory.list_versions.get(region)
        # Equal versions: the publisher never signs two lists with one version, so this is
        # the list we applied when we last followed this region (a move back after a
        # profile change), unless that region's list is the one in force already.
        rejoined = (
            last is not None
            and sl.version == last
            and (self.server_list is None or self.server_list.region != region)
        )
        if last is not None and sl.version <= last and not rejoined:
            self._reject(
                f"list for region {region}",
                "replay",
                f"version {sl.version} is not newer than v{last} already applied",
            )
            return
        self.server_list, self.list_payload = sl, payload
        self.memory.list_versions[region] = sl.version
        self.kod.reset()  # DENY/RSTR hold only until the list changes
        if self.state is not None:
            self.state.save_list_payload(payload)
        self._save_memory()
        log.info(
            "%s: list v%d applied from region %s: %s",
            self.id,
            sl.version,
            region,
            ", ".join(f"{s.host}:{s.port}" for s in sl.servers),
        )
        self._changed("new list")

    def _on_profile(self, payload: bytes) -> None:
        if not payload:
            self.counters["withdrawn"] += 1
            log.warning("%s: profile withdrawn on the broker; keeping the last good one", self.id)
            return
        if payload == self.profile_payload:
            return
        prof = self._verified("profile", Profile, payload, self.id)
        if prof is None:
            return
        last = self.memory.profile_version
        if last is not None and prof.version <= last:
            self._reject(
                "profile", "replay", f"version {prof.version} is not newer than v{last} applied"
            )
            return
        self.profile, self.profile_payload = prof, payload
        self.memory.profile_version = prof.version
        if self.state is not None:
            self.state.save_profile_payload(payload)
        self._save_memory()
        log.info(
            "%s: profile v%d applied: region %s, time zone %s",
            self.id,
            prof.version,
            prof.region,
            prof.timezone,
        )
        self._switch_region(prof.region)
        self._changed("new profile")

    def _on_cmd(self, payload: bytes) -> None:
        if not payload:
            return
        # Commands carry no signature in the contract (only lists and profiles do): the
        # broker's ACL guards this topic, and the worst a forged one can do is one sync.
        try:
            cmd, _ = codec.decode(Command, payload, topic_id=self.id)
        except Rejected as r:
            self._reject("command", r.reason, r.detail)
            return
        if cmd.command != "resync":
            return
        why = self._cmd_ignored(cmd)
        if why is not None:
            self.counters["cmd-ignored"] += 1
            log.info("%s: resync command ignored: %s", self.id, why)
            return
        self._last_cmd = time.monotonic()
        delay = schedule.resync_delay(self.rng, self.resync_jitter_s)
        log.info("%s: resync requested by command; syncing in %.1f s", self.id, delay)
        self.counters["cmd-resync"] += 1
        self._sync_at(delay, "command")

    def _cmd_ignored(self, cmd: Command) -> str | None:
        """Why a resync command is not obeyed, or None. Commands queue up while an agent
        is offline and anyone allowed to send one could send thousands."""
        floor = self.settings.cmd_min_interval_s
        if self._last_cmd is not None and time.monotonic() - self._last_cmd < floor:
            return f"the last one was obeyed less than {floor:g} s ago"
        if cmd.issued_at is not None and self._clock_known_good:
            age = self.wall_clock() - cmd.issued_at.timestamp()
            if age > self.settings.cmd_max_age_s:
                return f"issued {age:.0f} s ago (older than {self.settings.cmd_max_age_s:g} s)"
        return None

    def _changed(self, why: str) -> None:
        if self.once:
            if self._grace_pending:  # the list came late (async retained replay): go now
                self._grace_pending = False
                self._once_grace_over()
            return  # otherwise --once syncs once settled
        if not self._startup_done:
            return  # the start-up sync will use what is new
        self._sync_at(schedule.resync_delay(self.rng, self.resync_jitter_s), why)

    def _once_settled(self) -> None:
        if not self.once or self.settled:
            return
        region = self.region
        if region is not None and region != self.list_region:
            self._switch_region(region)
            return
        if self.server_list is None:
            # Some brokers (NATS) replay retained messages asynchronously: a short grace.
            self._grace_pending = True
            self._call_later(self.settings.profile_grace_s, self._once_grace_over)
            return
        self.settled = True
        self._sync_at(0.0, "once")

    def _once_grace_over(self) -> None:
        if self.settled or self.finished:
            return
        if self.server_list is None:
            self.fatal = (
                f"no server list for region {self.region} on the broker and none cached"
                if self.region
                else "no region: no profile on the broker and no --region given"
            )
            self.finished = True
            return
        self.settled = True
        self._sync_at(0.0, "once")

    # --- syncing ---------------------------------------------------------------------------

    def _sync_at(self, delay_s: float, why: str) -> None:
        """Arm the sync timer for `delay_s` from now unless it is already due sooner."""
        if self.stopping:
            return
        due = time.monotonic() + delay_s
        if self._sync_timer is not None:
            if self._sync_due <= due:
                return
            self._sync_timer.cancel()
        self._sync_due = due
        log.debug("%s: sync in %.3f s (%s)", self.id, delay_s, why)
        self._sync_timer = self._call_later(delay_s, self._sync_now)

    def sync_now(self) -> None:
        """Start a sync at once (tests, commands)."""
        self._sync_at(0.0, "requested")

    def _sync_now(self) -> None:
        self._sync_timer = None
        self._sync_due = float("inf")
        if self._syncing:
            self._sync_again = True
            return
        if self.server_list is None:
            log.info("%s: nothing to sync from yet (no list for region %s)", self.id, self.region)
            return
        job = SyncJob(
            self.server_list,
            self.profile,
            self.desired_timezone(),
            first_sync=not self._clock_known_good,
        )
        self._syncing = True
        assert self.host is not None
        self.host.run_blocking(
            lambda: self._sync_work(job), lambda r, e: self._sync_done(job, r, e)
        )

    def _sync_work(self, job: SyncJob) -> SyncOutcome:
        """On a worker thread: probe, discipline, time zone. Touches only `job` and I/O."""
        servers = [(s.host, s.port) for s in job.server_list.servers]
        result = self.probe_fn(servers, self._probe_settings, self.kod, first_sync=job.first_sync)
        applied = None
        error = None
        if result.ok:
            chosen = (result.chosen.host, result.chosen.port)
            try:
                applied = self.backend.apply(servers, chosen, result.chosen.sample.offset_s)
            except Exception as exc:  # a backend bug must not stop the agent keeping time
                log.exception("%s: clock backend %s failed", self.id, self.backend.name)
                error = f"backend {self.backend.name} raised {type(exc).__name__}: {exc}"
            if applied is not None and not applied.ok:
                error = f"backend {self.backend.name}: {applied.detail}"
        else:
            error = result.note or "no server in the list gave a valid sync"
        tz, tz_error = job.timezone, None
        if job.timezone is not None and self.settings.tz_root is not None:
            from clockfleet.agent import timezone as tzmod

            try:
                done = tzmod.set_timezone(
                    job.timezone, self.settings.tz_root, self.settings.use_timedatectl
                )
                if not done.startswith("already"):
                    log.info("%s: time zone %s: %s", self.id, job.timezone, done)
            except tzmod.TimezoneError as exc:
                tz_error = f"time zone {job.timezone} not set: {exc}"
                tz = tzmod.current_timezone(self.settings.tz_root)
        return SyncOutcome(result, applied, tz, tz_error, error)

    def _sync_done(self, job: SyncJob, outcome: SyncOutcome | None, exc: BaseException | None):
        self._syncing = False
        if exc is not None or outcome is None:
            log.error("%s: sync crashed: %r", self.id, exc)
            outcome = SyncOutcome(None, None, job.timezone, None, f"sync crashed: {exc!r}")
        report = self._build_report(job, outcome)
        payload = codec.encode(report)
        self.last_report, self.last_report_payload = report, payload
        self.reports_made += 1
        if report.ok:
            self._failures = 0
            residual = residual_offset(report)
            self._last_good = LastGood(time.monotonic(), residual, report)
            if self.state is not None:
                self.state.save_last_good(report, self.wall_clock())
            if not self._clock_known_good and residual <= self._probe_settings.panic_offset_s:
                self._clock_known_good = True
                if self._tls is not None and not cert_time_checked(self._tls):
                    set_cert_time_check(self._tls, True)
                    log.info("%s: clock synced: broker certificates' dates checked again", self.id)
            log.info(
                "%s: synced to %s:%d (list v%d): offset %+.6f s, delay %.6f s, %s",
                self.id,
                report.server.host,
                report.server.port,
                report.list_version,
                report.offset_s,
                report.delay_s,
                report.discipline,
            )
            if outcome.applied is not None and outcome.applied.detail:
                log.info("%s: %s: %s", self.id, self.backend.name, outcome.applied.detail)
        else:
            self._failures += 1
            self.counters["sync-failures"] += 1
            log.warning(
                "%s: sync failed (list v%d): %s", self.id, report.list_version, report.error
            )
        if self.state is not None:
            self.state.save_report(payload)
        self._write_status()
        if self.connected:
            self._send_report(payload)
        elif self.once:
            self.finished = True  # nowhere to send it; the caller prints it
        else:
            self._backlog.append(payload)
        if self.on_report is not None:
            self.on_report(self, report)
        if self.once:
            return
        if self._sync_again:
            self._sync_again = False
            self._sync_at(0.0, "changed during sync")
        elif report.ok:
            self._sync_at(schedule.poll_delay(self.rng, self.poll_interval_s), "poll")
        else:
            self._sync_at(
                schedule.retry_delay(
                    self.rng, self._failures, self.settings.retry_min_s, self.settings.retry_max_s
                ),
                "retry",
            )

    @property
    def _probe_settings(self) -> Any:
        if self.settings.probe_settings is not None:
            return self.settings.probe_settings
        from clockfleet.agent.probe import ProbeSettings

        return ProbeSettings()

    def _build_report(self, job: SyncJob, o: SyncOutcome) -> Report:
        return build_report(self.id, job, o, self.wall_clock(), self.settings.software)

    # --- outgoing --------------------------------------------------------------------------

    def _send_report(self, payload: bytes) -> None:
        info = self.client.publish(self._t_report, payload, qos=1, retain=True)
        self._report_mids.add(info.mid)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid in self._report_mids:
            self._report_mids.discard(mid)
            self.reports_acked += 1
            if self.once and not self._report_mids:
                self.finished = True

    def _status_payload(self, state: str, session: int) -> bytes:
        return codec.encode(
            Status(
                schema="clock.status/1",
                agent=self.id,
                state=state,  # type: ignore[arg-type]
                software=self.settings.software,
                session=session,
                since=self._now_dt(),
                region=self.region,
            )
        )

    def _publish_status(self, state: str, session: int) -> None:
        self.client.publish(self._t_status, self._status_payload(state, session), 1, True)

    # --- local status file -----------------------------------------------------------------

    def local_status(self) -> dict[str, Any]:
        """What status.json says (see clockfleet.agent.state.local_status)."""
        return local_status(
            agent=self.id,
            region=self.region,
            report=self.last_report,
            last_good=self._last_good,
            poll_interval_s=self.poll_interval_s,
            trust_offset_s=self.settings.trust_offset_s,
            timezone=self.desired_timezone(),
            counters=self.counters,
            now=self._now_dt(),
            monotonic=time.monotonic(),
        )

    def _write_status(self) -> None:
        if self.state is None:
            return
        self.state.save_status(self.local_status())
        if self._stale_timer is not None:
            self._stale_timer.cancel()
            self._stale_timer = None
        if self._last_good is not None and not self.once:
            left = 2 * self.poll_interval_s - (time.monotonic() - self._last_good.monotonic)
            if left > 0:
                # Rewrite the file when the last good sync goes stale, so it never lies.
                self._stale_timer = self._call_later(left + 0.001, self._write_status)

    # --- helpers ---------------------------------------------------------------------------

    def _call_later(self, delay_s: float, fn: Callable[[], Any]) -> Any:
        assert self.host is not None
        return self.host.call_later(delay_s, fn)

    def _now_dt(self) -> datetime:
        return datetime.fromtimestamp(self.wall_clock(), timezone.utc)
