"""What is in force for one agent: its region's list, its profile, the versions it applied.

Lists and profiles arrive as payloads; `take_list` and `take_profile` accept one (strictly
decoded, signed by a trusted key, newer than the last one applied: intake.py's rules) or
count and log why not, and keep the state directory's copies and the remembered versions
current. Nothing here syncs or talks to the broker: the agent reads what changed and acts.
"""

from __future__ import annotations

import collections
import logging
from typing import Optional

from clockfleet.agent import intake
from clockfleet.agent.agent_settings import AgentSettings
from clockfleet.agent.state import Cached, Remembered, StateDir
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.messages import Profile, ServerList

log = logging.getLogger("clockfleet.agent")


class InForce:
    def __init__(
        self,
        settings: AgentSettings,
        state: Optional[StateDir],
        counters: collections.Counter[str],
    ) -> None:
        self.settings = settings
        self.id = settings.agent_id
        self.state = state
        self.counters = counters
        self.server_list: Optional[ServerList] = None
        self.list_payload: Optional[bytes] = None
        self.profile: Optional[Profile] = None
        self.profile_payload: Optional[bytes] = None
        self.memory = Remembered()
        self.list_region: Optional[str] = None  # the region whose list topic is followed

    # --- what follows from it ---------------------------------------------------------------

    @property
    def region(self) -> Optional[str]:
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

    def desired_timezone(self) -> Optional[str]:
        if self.profile is not None:
            return self.profile.timezone
        if self.server_list is not None and self.server_list.timezone is not None:
            return self.server_list.timezone
        return self.settings.timezone

    # --- the state directory ----------------------------------------------------------------

    def load(self, remembered: Remembered, cached: Cached) -> None:
        """What the state directory held from before a restart (verified again by state.py)."""
        self.memory = remembered
        for reason in cached.refused:
            self.counters[reason] += 1
        self.profile, self.profile_payload = cached.profile, cached.profile_payload
        self.server_list, self.list_payload = cached.server_list, cached.list_payload

    def save_memory(self) -> None:
        if self.state is not None:
            self.state.save_remembered(self.memory)

    # --- taking lists and profiles ----------------------------------------------------------

    def reject(self, what: str, reason: str, detail: str) -> None:
        # Logged first: whoever sees the counter move finds the line already written.
        log.warning("%s: rejected %s: %s: %s", self.id, what, reason, detail)
        self.counters[reason] += 1

    def take_list(self, region: str, payload: bytes, cache: Optional[intake.VerifiedCache]) -> bool:
        """Accept this list of `region` (True) or count and log why not (False)."""
        if not payload:
            self.counters["withdrawn"] += 1
            log.warning(
                "%s: list of region %s withdrawn on the broker; keeping the last good one (%s)",
                self.id,
                region,
                f"v{self.server_list.version}" if self.server_list else "none",
            )
            return False
        if payload == self.list_payload:
            return False  # the same list again (a reconnect's retained copy): nothing new
        what = f"list for region {region}"
        try:
            sl = intake.verified_cached(cache, ServerList, payload, region, self.settings.trust)
        except Rejected as r:
            self.reject(what, r.reason, r.detail)
            return False
        refused = intake.list_refusal(sl, self.memory.list_versions.get(region), self.server_list)
        if refused is not None:
            self.reject(what, refused.reason, refused.detail)
            return False
        self.server_list, self.list_payload = sl, payload
        self.memory.list_versions[region] = sl.version
        if self.state is not None:
            self.state.save_list_payload(payload)
        self.save_memory()
        if log.isEnabledFor(logging.INFO):  # a fleet of 10,000 pays this per list otherwise
            servers = ", ".join(f"{s.host}:{s.port}" for s in sl.servers)
            log.info(
                "%s: list v%d applied from region %s: %s", self.id, sl.version, region, servers
            )
        return True

    def take_profile(self, payload: bytes, cache: Optional[intake.VerifiedCache]) -> bool:
        """Accept this profile (True) or count and log why not (False)."""
        if not payload:
            self.counters["withdrawn"] += 1
            log.warning("%s: profile withdrawn on the broker; keeping the last good one", self.id)
            return False
        if payload == self.profile_payload:
            return False
        try:
            prof = intake.verified_cached(cache, Profile, payload, self.id, self.settings.trust)
        except Rejected as r:
            self.reject("profile", r.reason, r.detail)
            return False
        refused = intake.profile_refusal(prof, self.memory.profile_version)
        if refused is not None:
            self.reject("profile", refused.reason, refused.detail)
            return False
        self.profile, self.profile_payload = prof, payload
        self.memory.profile_version = prof.version
        if self.state is not None:
            self.state.save_profile_payload(payload)
        self.save_memory()
        log.info(
            "%s: profile v%d applied: region %s, time zone %s",
            self.id,
            prof.version,
            prof.region,
            prof.timezone,
        )
        return True
