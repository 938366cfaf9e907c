"""One sync, from the list in force to a report: probe, discipline, time zone, report.

The probe runs on the host's loop (probe.py); the rest of the sync (sync.py: the clock
backend and the time zone) on a worker when it can block. One sync at a time per agent: a
sync asked for while one runs is remembered and run right after (`again`). A bug anywhere
inside ends the sync with a failed report, never a sync that runs forever.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from clockfleet.agent.agent_settings import AgentSettings
from clockfleet.agent.clock_backends import ClockBackend
from clockfleet.agent.localloop import run_inline
from clockfleet.agent.loop_host import ProbeHost
from clockfleet.agent.probe import NtsProbe, ProbeResult, ProbeSettings, start_probe
from clockfleet.agent.report import SyncJob, SyncOutcome, build_report
from clockfleet.agent.server_memory import KodMemory
from clockfleet.agent.sync import finish_sync, needs_worker
from clockfleet.agent.zone_change import ZoneSettings
from clockfleet.protocol import codec
from clockfleet.protocol.messages import Report, ZoneCommand

if TYPE_CHECKING:
    from clockfleet.ntp.nts_exchange import NtsClient
    from clockfleet.ntp.nts_tls import NtsTrust

log = logging.getLogger("clockfleet.agent")


def nts_trust(ca_file: Optional[str]) -> NtsTrust:
    """The system's CA store, plus agent.yaml's `nts_ca_file` (or --nts-ca-file)."""
    from clockfleet.ntp.nts_tls import NtsTrust

    return NtsTrust(ca_files=(ca_file,) if ca_file else ())


def _never_behind() -> Optional[str]:
    return None


# What a finished sync hands on: the report, its bytes, and what the sync did.
Done = Callable[[Report, bytes, SyncOutcome], None]


class SyncRun:
    def __init__(
        self,
        settings: AgentSettings,
        backend: ClockBackend,
        kod: Optional[KodMemory],
        wall_clock: Callable[[], float],
    ) -> None:
        self.id = settings.agent_id
        self.settings = settings
        self.backend = backend
        self.probe_settings = settings.probe_settings or ProbeSettings()
        self.kod = kod if kod is not None else KodMemory()
        self.wall_clock = wall_clock
        self.host: Optional[ProbeHost] = None
        self.running = False
        self.again = False  # asked for while running: run once more when done
        self.zone_command: Optional[ZoneCommand] = None  # the last zone change's command
        # NTS servers' keys and cookies live in `nts` between syncs (docs/nts.md). It is made
        # for the first list that names an NTS server, so an agent of plain-NTP lists never
        # loads the NTS modules (about 1 MB of its memory). The agent gives it its clock
        # evidence (the broker's TLS rule) and counters (service.py).
        self.nts: Optional[NtsClient] = None
        self.clock_behind: Callable[[], Optional[str]] = _never_behind
        self.counters: Optional[collections.Counter[str]] = None

    def nts_client(self) -> NtsClient:
        if self.nts is None:
            from clockfleet.ntp.nts_exchange import NtsClient

            trust = nts_trust(self.settings.nts_ca_file)
            self.nts = NtsClient(
                trust=trust, clock_behind=self.clock_behind, event=self._nts_certificate
            )
        return self.nts

    def _nts_certificate(self, kind: str, detail: str) -> None:
        """An NTS-KE certificate's dates were waived on evidence, or refused for want of it
        (the broker's rule: cert_dates.py)."""
        if self.counters is not None:
            self.counters[kind] += 1
        if kind == "nts-time-check-waived":
            log.warning(
                "%s: NTS-KE certificate refused at this host's clock, which is provably behind "
                "(%s): verified without its validity dates until the first good sync",
                self.id,
                detail,
            )
        else:
            log.warning("%s: %s", self.id, detail)

    def attach(self, host: ProbeHost) -> None:
        self.host = host

    def start(self, job: SyncJob, done: Done) -> bool:
        """Start a sync of `job`; False when one runs already (it will run again after)."""
        assert self.host is not None, "attach() first"
        if self.running:
            self.again = True
            return False
        self.running = True
        self.again = False
        servers = [(s.host, s.port) for s in job.server_list.servers]
        nts_servers = [s for s in job.server_list.servers if s.nts]
        nts: dict[tuple[str, int], int] = {}
        if nts_servers:
            from clockfleet.ntp.nts_ke import KE_PORT

            nts = {(s.host, s.port): s.nts_ke_port or KE_PORT for s in nts_servers}
        try:
            start_probe(
                servers,
                self.probe_settings,
                self.kod,
                self.host,
                lambda result: self._probed(job, result, done),
                first_sync=job.first_sync,
                nts=NtsProbe(nts, self.nts_client()) if nts else None,
            )
        except Exception as exc:  # a bug must end this sync, not leave it running forever
            self._finished(job, None, exc, done)
        return True

    def _probed(self, job: SyncJob, result: ProbeResult, done: Done) -> None:
        assert self.host is not None
        if self.counters is not None:  # each NTS failure, by its outcome (status.json)
            self.counters.update(a.outcome for a in result.tried if a.outcome.startswith("nts-"))
        measured_at = (time.time(), time.monotonic())  # before any backend moves the clock
        settings = self.settings

        def finish() -> SyncOutcome:
            return finish_sync(
                self.id,
                job,
                result,
                measured_at,
                backend=self.backend,
                zone_settings=ZoneSettings(
                    settings.tz_root,
                    settings.use_timedatectl,
                    settings.zone_change_command,
                    settings.zone_change_timeout_s,
                ),
                time_setters_root=settings.time_setters_root,
            )

        blocks = needs_worker(job, self.backend, settings.tz_root, settings.time_setters_root)
        run = self.host.run_blocking if blocks else run_inline
        run(finish, lambda outcome, exc: self._finished(job, outcome, exc, done))

    def _finished(
        self,
        job: SyncJob,
        outcome: Optional[SyncOutcome],
        exc: Optional[BaseException],
        done: Done,
    ) -> None:
        self.running = False
        if exc is not None or outcome is None:
            log.error("%s: sync crashed: %r", self.id, exc)
            outcome = SyncOutcome(None, None, job.timezone, None, f"sync crashed: {exc!r}")
        if outcome.zone is not None and outcome.zone.command is not None:
            self.zone_command = outcome.zone.command  # reported until the next change
        report = build_report(
            self.id,
            job,
            outcome,
            self.wall_clock(),
            self.settings.software,
            time.monotonic(),
            zone_command=self.zone_command,
        )
        done(report, codec.encode(report), outcome)
