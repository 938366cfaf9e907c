"""`clockfleet agent --once`: wait for the retained profile and list, sync once, publish the
report, stop. A small driver around an ordinary `Agent` built with once=True (a clean
session under its own client id, no status announced, no schedule of its own):

1. connected -> fence: the retained profile and list are in once the fence is answered
   (`clockfleet.protocol.session`). A profile that names another region makes the agent
   follow that region's list: fence again.
2. no list yet -> a short grace (`profile_grace_s`): some brokers (NATS) replay retained
   messages after the fence; a list arriving within it is synced at once.
3. no broker answers -> sync from the cached list, or give up when there is none.
4. the report is published -> finished once the broker acknowledged it (or at once when no
   broker could be reached: the caller prints the report either way).
"""

from __future__ import annotations

import logging
import sys
from typing import Optional

from clockfleet.agent.fleet import Fleet
from clockfleet.agent.service import Agent

log = logging.getLogger("clockfleet.agent")


class OnceDriver:
    def __init__(self, agent: Agent) -> None:
        assert agent.once, "build the agent with once=True"
        self.agent = agent
        self.settled = False  # the sync has been asked for
        self.waiting_grace = False
        self.finished = False
        self.fatal: Optional[str] = None  # why there is nothing to report
        self.unreachable: Optional[str] = None  # why no broker could be reached
        self._fenced_region: Optional[str] = None
        watch = agent.observers
        watch.on_online = self._online
        watch.on_changed = self._changed
        watch.on_report = self._reported
        watch.on_acked = self._acked
        watch.on_unreachable = self._no_broker

    def _online(self) -> None:
        self._fence()

    def _fence(self) -> None:
        self._fenced_region = self.agent.list_region
        self.agent.link.fence(self._snapshot_in)

    def _snapshot_in(self) -> None:
        if self.settled or self.finished:
            return
        if self.agent.list_region != self._fenced_region:
            self._fence()  # a profile moved us to another region: wait for its list too
            return
        if self.agent.server_list is None:
            self.waiting_grace = True
            assert self.agent.host is not None
            self.agent.host.call_later(self.agent.settings.profile_grace_s, self._grace_over)
            return
        self._sync("once")

    def _changed(self, why: str) -> None:
        if self.waiting_grace and why == "new list":
            self._grace_over()  # the list came late (async retained replay): go now

    def _grace_over(self) -> None:
        self.waiting_grace = False
        if self.settled or self.finished:
            return
        if self.agent.server_list is None:
            region = self.agent.region
            self.fatal = (
                f"no server list for region {region} on the broker and none cached"
                if region
                else "no region: no profile on the broker and no --region given"
            )
            self.finished = True
            return
        self._sync("once")

    def _no_broker(self, why: str) -> None:
        self.unreachable = why
        if self.agent.server_list is None:
            self.fatal = f"broker unreachable and no cached server list ({why})"
            self.finished = True
            return
        log.warning("%s: no broker reachable: %s", self.agent.id, why)
        log.info("%s: syncing from the cached list", self.agent.id)
        self._sync("cached list")

    def _sync(self, why: str) -> None:
        self.settled = True
        log.debug("%s: --once syncs (%s)", self.agent.id, why)
        self.agent.sync_now()

    def _reported(self, agent: Agent, report: object) -> None:
        if not agent.connected:
            self.finished = True  # nowhere to send it; the caller prints it

    def _acked(self) -> None:
        if self.agent.link.reports_in_flight == 0:
            self.finished = True


def run_once(agent: Agent, timeout_s: float) -> int:
    """Drive `agent` once on this thread; print the report as JSON. Exit code: 0 on a good
    sync, 1 on a failed one or none, 2 when no broker could be reached and nothing cached."""
    driver = OnceDriver(agent)
    fleet = Fleet(workers=0)
    fleet.add(agent)
    done = fleet.run_until(lambda: driver.finished, timeout_s)
    report = agent.last_report_payload if agent.reports_made else None
    if agent.connected:
        agent.stop()
        fleet.run_until(lambda: agent.closed, 1.0)
    fleet.close()
    if driver.fatal is not None:
        print(f"clockfleet agent: {driver.fatal}", file=sys.stderr)
        return 2 if driver.unreachable else 1
    if report is None:
        why = "no sync" if done else f"timed out after {timeout_s:g} s"
        print(f"clockfleet agent: {why}", file=sys.stderr)
        return 1
    if not done:
        log.error("report not acknowledged by the broker within %g s", timeout_s)
    elif driver.unreachable:
        log.warning("report not published (broker unreachable); kept in the state dir")
    sys.stdout.write(report.decode() + "\n")
    sys.stdout.flush()
    assert agent.last_report is not None
    return 0 if agent.last_report.ok else 1
