"""`make demo`: the whole system on this machine, on loopback, in one run directory.

Starts Mosquitto (identities + ACL, from broker/), three chronyd NTP servers (one under
libfaketime with a clock a few seconds ahead) and a silent UDP port, a signing key, the
collector, Prometheus (config/prometheus.yml + config/alerts.yml), and a handful of agents
(observe backend: they measure and report, they never touch this machine's clock or time
zone). Publishes config/fleet.demo.yaml, shows the fleet live, and partway through publishes
config/fleet.demo.after.yaml so the agents move to the new lists.

This module runs those steps in order and stops everything at the end; the steps themselves
are in demo_stack.py (starting things) and demo_watch.py (the fleet while it runs, and the
verdict), the environment is read by demo_settings.py.

Environment:
  DEMO_FOR=N            run N seconds without a live screen, print the final table, exit 0
                        only if every agent reported a good sync on the latest list version
  DEMO_CHANGE_AFTER=S   publish the changed fleet file S seconds after the agents start
                        (default 20, or 40% of DEMO_FOR when that is shorter)
  DEMO_RUNDIR=DIR       run directory (default run/demo-<UTC timestamp> in the repository)

Ctrl-C (or any error) stops every process the demo started.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import traceback
from pathlib import Path

from clockfleet.demo_procs import Processes, StepFailed
from clockfleet.demo_say import say
from clockfleet.demo_settings import Settings, settings_from_env
from clockfleet.demo_stack import Stack, start
from clockfleet.demo_watch import verdict, watch


def banner(stack: Stack, settings: Settings) -> list[str]:
    return [
        f"run directory   {stack.rundir} (every daemon's log is under it)",
        f"broker          {stack.broker.url}, {stack.broker.tls_url} "
        f"(identities in {stack.broker.identities})",
        f"metrics         {stack.collector_url}",
        f"prometheus      {stack.prometheus_url}  (alerts: {stack.prometheus_url}/alerts)",
        "ntp servers     "
        + ", ".join(f"{role} {h}:{p}" for (h, p), role in stack.server_names().items()),
        f"list change     {settings.change_after:g} s after the agents start "
        f"(config/fleet.demo.after.yaml)",
        f"try, meanwhile  {shlex.join([_clockfleet_command(), 'status', *stack.as_('operator')])}",
    ]


def _clockfleet_command() -> str:
    """How to type `clockfleet` in another terminal (the venv's, when not on PATH)."""
    beside = Path(sys.executable).parent / "clockfleet"
    if beside.exists() and shutil.which("clockfleet") != str(beside):
        return str(beside)
    return "clockfleet"


def run(settings: Settings) -> int:
    settings.rundir.mkdir(parents=True, exist_ok=True)
    say(f"run directory {settings.rundir}")
    procs = Processes(settings.rundir, say)
    try:
        stack = start(procs, settings)
        for line in banner(stack, settings):
            say(line)
        watch(procs, stack, settings)
        return verdict(stack, settings)
    except StepFailed as exc:
        say(f"FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    except Exception:
        say("FAILED with an unexpected error:")
        traceback.print_exc()
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        say("stopping every process the demo started")
        procs.close()
        say(f"stopped; logs stay in {settings.rundir}")


def _stop_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    settings = settings_from_env(dict(os.environ))
    # SIGTERM (kill) and SIGHUP (the terminal went away) stop the demo like Ctrl-C does:
    # through the `finally` that stops every process it started.
    signal.signal(signal.SIGTERM, _stop_signal)
    signal.signal(signal.SIGHUP, _stop_signal)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
