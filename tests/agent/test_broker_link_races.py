"""The broker link's states against the order in which a loaded machine delivers events.

A connect runs on a worker thread while the loop reads the socket: the broker's CONNACK can
be handled before the worker's "connect returned" reaches the loop. Either order must leave
the agent online."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Optional, TypeVar

from clockfleet.agent.fleet import Fleet
from tests.agent.servicekit import make_agent, wait_until

T = TypeVar("T")


class LateReturns(Fleet):
    """A Fleet whose blocking jobs report back only once the agent is online: the CONNACK,
    read by the loop meanwhile, always wins the race."""

    def __init__(self, agent_online: Callable[[], bool]) -> None:
        super().__init__(workers=2)
        self.agent_online = agent_online
        self.returned = threading.Event()

    def run_blocking(
        self,
        fn: Callable[[], T],
        done: Callable[[Optional[T], Optional[BaseException]], None],
    ) -> None:
        def returned(result: Optional[T], error: Optional[BaseException]) -> None:
            done(result, error)
            self.returned.set()

        def late() -> T:
            result = fn()
            wait_until(self.agent_online, timeout_s=10)  # on the worker, not the loop
            return result

        super().run_blocking(late, returned)


def test_a_connack_handled_before_the_connect_call_returns_leaves_the_agent_online(broker, keys):
    online = threading.Event()
    agent = make_agent(broker, "a1", keys=keys)
    agent.observers.on_online = online.set
    fleet = LateReturns(online.is_set)
    fleet.add(agent)
    fleet.start()
    try:
        assert fleet.returned.wait(10), "the connect call never returned"
        assert agent.connected
    finally:
        fleet.stop(timeout_s=3.0)
