"""systemd-timesyncd's own word on its synchronisation, read without D-Bus or privilege.

timesyncd touches /run/systemd/timesync/synchronized on each successful synchronisation
(systemd-timesyncd.service(8)); systemd-time-wait-sync waits for that file. Its existence says
timesyncd synchronised the clock since boot (/run is emptied at boot), its mtime when it last
did.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from clockfleet.protocol.messages import TimesyncdState

SYNCHRONIZED = Path("/run/systemd/timesync/synchronized")


def read_timesyncd(flag: Path = SYNCHRONIZED) -> TimesyncdState:
    try:
        mtime = os.stat(flag).st_mtime
    except OSError:
        return TimesyncdState(synchronised=False)
    return TimesyncdState(
        synchronised=True, last_sync_at=datetime.fromtimestamp(mtime, timezone.utc)
    )
