"""What one running agent works with: agent.yaml's tuning plus what the program resolved."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import msgspec

from clockfleet.agent.config import Tuning
from clockfleet.ntp.checks import ProbeSettings
from clockfleet.protocol import signing
from clockfleet.protocol.version import __version__


class AgentSettings(Tuning, kw_only=True):
    """The tuning agent.yaml shares (`Tuning`, one default each) plus what the program around
    the agent resolved (keys loaded, paths made)."""

    agent_id: str
    trust: signing.TrustStore = msgspec.field(default_factory=signing.TrustStore)
    probe_settings: Optional[ProbeSettings] = None  # None: the probe's defaults
    tz_root: Optional[Path] = None  # None: never touch a time zone
    time_setters_root: Optional[Path] = None  # None: never look for other time setters
    software: str = __version__
