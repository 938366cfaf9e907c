"""The bridges' states as central shows them: `$SYS/broker/connection/bridge-DC/state`,
"1" up and "0" down, retained and live."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from clockfleet.devstack.daemons import DaemonError
from clockfleet.protocol.connection import ConnectionSettings, new_client

STATE_FILTER = "$SYS/broker/connection/+/state"
# The generated central ACL lets the operator read every bridge's state (P8's signal); no
# other identity may, on central or on an edge.
WATCHER = "operator"


def watch_bridges(
    settings: ConnectionSettings,
    done: Callable[[dict[str, str]], bool],
    timeout_s: float = 2.0,
) -> dict[str, str]:
    """The bridges' `$SYS/broker/connection/bridge-DC/state` values (DC -> "1" up / "0"
    down), retained and live, as `settings` reads them, until done(states) or the timeout.
    {} when the broker cannot be reached."""
    states: dict[str, str] = {}
    refused: list[str] = []
    cond = threading.Condition()
    client = new_client(settings)

    def on_connect(c: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            with cond:
                refused.append(str(rc))
                cond.notify_all()
            return
        c.subscribe(STATE_FILTER, qos=0)

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        name = msg.topic.split("/")[3].removeprefix("bridge-")
        with cond:
            states[name] = msg.payload.decode(errors="replace")
            cond.notify_all()

    client.on_connect, client.on_message = on_connect, on_message
    address = settings.brokers[0]
    try:
        client.connect(address.host, address.port)
    except OSError:
        return {}
    client.loop_start()
    try:
        with cond:
            cond.wait_for(lambda: refused or done(states), timeout_s)
            if refused:
                raise DaemonError(f"{settings.username} may not log in to read bridges: {refused}")
            return dict(states)
    finally:
        client.disconnect()
        client.loop_stop()
