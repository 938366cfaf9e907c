"""The seam between an agent's parts and the loop that drives them, typed.

Two loops implement it: `fleet.Fleet` (the service, the fleet simulator, the benchmarks: one
selector thread for thousands of agents) and `localloop.LocalLoop` (a caller that blocks
until one probe ends). Everything here is called on the loop's own thread, except
`call_soon_threadsafe`, which is how other threads get in.

    ProbeHost  what a probe needs: timers, readable sockets, a place for blocking work
    AgentHost  what an agent needs besides: its paho client's socket driven by the loop, a
               way in from other threads, the process's cache of verified payloads
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Optional, Protocol, TypeVar

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from clockfleet.agent.intake import VerifiedCache

T = TypeVar("T")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class ProbeHost(Protocol):
    def call_later(self, delay_s: float, fn: Callable[[], object]) -> Cancellable:
        """fn() once, delay_s from now; the handle's cancel() keeps it from running."""
        ...

    def watch_readable(self, fd: int, fn: Callable[[], object]) -> None:
        """fn() whenever socket `fd` is readable (or has an error), until unwatch(fd)."""
        ...

    def unwatch(self, fd: int) -> None: ...

    def run_blocking(
        self, fn: Callable[[], T], done: Callable[[Optional[T], Optional[BaseException]], None]
    ) -> None:
        """fn() where it may block (a worker thread, or inline where there is none); then
        done(result, error) back on the loop."""
        ...


class AgentHost(ProbeHost, Protocol):
    verified: Optional[VerifiedCache]  # shared by the agents of one process

    def watch(self, client: mqtt.Client) -> None:
        """Drive this paho client's socket from the loop (paho's external-loop API)."""
        ...

    def call_soon_threadsafe(self, fn: Callable[[], object]) -> None: ...
