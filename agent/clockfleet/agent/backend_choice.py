"""A clock backend by name: the one place that knows every backend module."""

from __future__ import annotations

from collections.abc import Callable

from clockfleet.agent.clock_backends import BACKEND_NAMES, ClockBackend, ObserveBackend


def make_backend(name: str, **options: object) -> ClockBackend:
    """A backend by name with its options (agent.yaml's `backend_options`).

    Raises ValueError naming the valid backends, or the option that is wrong. Each backend
    lives in its own module, imported only when chosen.
    """
    if name == "observe":
        factory: Callable[..., ClockBackend] = ObserveBackend
    elif name == "chrony":
        from clockfleet.agent.backend_chrony import ChronyBackend as factory
    elif name == "timesyncd":
        from clockfleet.agent.backend_timesyncd import TimesyncdBackend as factory
    elif name == "system":
        from clockfleet.agent.backend_system import SystemBackend as factory
    else:
        raise ValueError(f"unknown clock backend {name!r} (valid: {', '.join(BACKEND_NAMES)})")
    try:
        return factory(**options)
    except TypeError as e:
        raise ValueError(f"clock backend {name!r}: {e}") from None
