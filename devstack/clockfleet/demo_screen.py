"""The live screen of an interactive demo (no DEMO_FOR): the fleet table, the time until the
list change, Prometheus' line and the latest events, redrawn in place."""

from __future__ import annotations

import contextlib
import time

from rich.console import Group
from rich.live import Live
from rich.text import Text

from clockfleet.demo_prometheus import prometheus_view
from clockfleet.demo_view import Names, View, table


class LiveScreen:
    """Started at once; paused while the demo prints a step (the change), stopped at the end."""

    def __init__(self, names: Names) -> None:
        self.names = names
        self.live = Live(table(View(), names), refresh_per_second=4, screen=False)
        self.width = self.live.console.width
        self.prometheus = "prometheus: (first scrape within ~5 s)"
        self.prometheus_at = 0.0
        self.live.start()

    def pause(self) -> None:
        self.live.stop()

    def resume(self) -> None:
        self.live.start()

    def poll_prometheus(self, url: str) -> None:
        """Ask Prometheus again when its line is 5 s old (it scrapes every 2 s)."""
        if time.monotonic() - self.prometheus_at >= 5:
            self.prometheus, self.prometheus_at = prometheus_view(url), time.monotonic()

    def show(self, view: View, remaining: str, events: list[str]) -> None:
        self.live.update(
            Group(
                table(view, self.names, width=self.width),
                Text(remaining, style="bold"),
                Text(self.prometheus),
                Text("\n".join(events), style="dim"),
            )
        )

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.live.stop()
