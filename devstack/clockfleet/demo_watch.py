"""Watching the demo's fleet: read it as `clockfleet status --json` sees it once a second,
print (or show on the live screen) what changed, publish the changed fleet file on the way,
and judge the final state."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clockfleet.demo_fleet import AFTER
from clockfleet.demo_procs import Processes, StepFailed, clockfleet_argv
from clockfleet.demo_prometheus import prometheus_view
from clockfleet.demo_say import say
from clockfleet.demo_screen import LiveScreen
from clockfleet.demo_settings import Settings
from clockfleet.demo_stack import Stack, agent_dir, publish
from clockfleet.demo_view import (
    Names,
    View,
    changes,
    plain_table,
    problems,
    view_from_status_json,
    with_tried,
)


def read_view(stack: Stack) -> View:
    """The fleet as `clockfleet status --json` sees it, with each agent's `tried` list from
    the report its state directory keeps; an empty view with `error` set if status failed."""
    argv = clockfleet_argv("status", "--json", *stack.as_("operator"))
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return View(error="`clockfleet status --json` did not answer within 20 s")
    if done.returncode != 0:
        with (stack.rundir / "logs" / "status.log").open("a") as f:
            f.write(f"exit {done.returncode}: {done.stderr}\n")
        last = (done.stderr.strip().splitlines() or [""])[-1]
        return View(error=f"`clockfleet status --json` exited {done.returncode}: {last}")
    try:
        view = view_from_status_json(json.loads(done.stdout))
    except ValueError as exc:
        return View(error=f"`clockfleet status --json` printed no JSON list: {exc}")
    reports = {}
    for a in stack.agents:
        with contextlib.suppress(OSError, ValueError):
            reports[a.id] = json.loads((agent_dir(stack, a) / "state" / "report.json").read_text())
    return with_tried(view, reports)


@dataclass
class Seen:
    """What the watch carries from one look to the next."""

    view: View = field(default_factory=View)
    events: list[str] = field(default_factory=list)  # the latest, time-stamped
    last_error: str = ""
    changed: bool = False  # the changed fleet file is published


def look(stack: Stack, seen: Seen, names: Names) -> list[str]:
    """Read the fleet once: the lines for what changed since the last look (or for a new
    error, once; the last good view is kept)."""
    new = read_view(stack)
    if new.error:
        lines = [new.error] if new.error != seen.last_error else []
        seen.last_error = new.error
    else:
        seen.last_error = ""
        lines = changes(seen.view, new, names)
        seen.view = new
    return lines


def change_lists(procs: Processes, stack: Stack, screen: LiveScreen | None) -> None:
    if screen is not None:
        screen.pause()
    say("changing the lists: us-east gets a silent and a skewed server first, eu-west is reordered")
    publish(procs, stack, AFTER, "after")
    if screen is not None:
        screen.resume()


def remaining(settings: Settings, elapsed: float, changed: bool) -> str:
    if changed:
        return "list changed; Ctrl-C stops the demo"
    return f"list change in {settings.change_after - elapsed:.0f} s"


def watch(procs: Processes, stack: Stack, settings: Settings) -> View:
    """Show the fleet until DEMO_FOR runs out (or Ctrl-C); publish the change on the way."""
    t0 = time.monotonic()
    seen = Seen()
    names = stack.server_names()
    screen = LiveScreen(names) if settings.interactive else None
    try:
        while True:
            elapsed = time.monotonic() - t0
            if settings.run_for is not None and elapsed >= settings.run_for:
                break
            if dead := procs.dead():
                raise StepFailed("a process stopped on its own:\n" + "\n".join(dead))
            if not seen.changed and elapsed >= settings.change_after:
                change_lists(procs, stack, screen)
                seen.changed = True
            if screen is not None:
                screen.poll_prometheus(stack.prometheus_url)
            for line in look(stack, seen, names):
                stamped = f"{datetime.now(UTC):%H:%M:%S} {line}"
                if screen is None:
                    print(f"{stamped}", flush=True)
                seen.events = [*seen.events, stamped][-8:]
            if screen is not None:
                screen.show(seen.view, remaining(settings, elapsed, seen.changed), seen.events)
            time.sleep(max(0.0, 1.0 - ((time.monotonic() - t0) % 1.0)))
    finally:
        if screen is not None:
            screen.stop()
    return seen.view


def verdict(stack: Stack, settings: Settings) -> int:
    view = read_view(stack)
    if view.error:
        say(f"FAILED: cannot read the fleet's final state: {view.error}")
        return 1
    print(plain_table(view, stack.server_names()), flush=True)
    say(prometheus_view(stack.prometheus_url))
    (stack.rundir / "final-view.json").write_text(
        json.dumps(
            {
                "published": view.published,
                "rows": {a: r.__dict__ for a, r in view.rows.items()},
                "servers": {n: list(hp) for n, hp in stack.servers.items()},
            },
            indent=1,
            default=list,
        )
    )
    wrong = problems(view, [a.id for a in stack.agents])
    if not wrong:
        say(f"every agent ({len(stack.agents)}) reported a good sync on its region's latest list")
        return 0
    say("NOT every agent is on a good sync with the latest list:")
    for line in wrong:
        print(f"    {line}", flush=True)
    return 1
