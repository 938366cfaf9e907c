"""`make demo`: the whole system on this machine, on loopback, in one run directory.

Starts Mosquitto (identities + ACL, from broker/), three chronyd NTP servers (one under
libfaketime with a clock a few seconds ahead) and a silent UDP port, a signing key, the
collector, Prometheus (config/prometheus.yml + config/alerts.yml), and a handful of agents
(observe backend: they measure and report, they never touch this machine's clock or time
zone). Publishes config/fleet.demo.yaml, shows the fleet live, and partway through publishes
config/fleet.demo.after.yaml so the agents move to the new lists. (Over 400 lines: the steps
above, in the order a reader follows them; the live view, the agents' processes and the
fleet simulator are in demo_view.py, demo_procs.py and demo_fleet.py.)

Environment:
  DEMO_FOR=N            run N seconds without a live screen, print the final table, exit 0
                        only if every agent reported a good sync on the latest list version
  DEMO_CHANGE_AFTER=S   publish the changed fleet file S seconds after the agents start
                        (default 20, or 40% of DEMO_FOR when that is shorter)
  DEMO_RUNDIR=DIR       run directory (default run/demo-<UTC timestamp> in the repository)

Ctrl-C (or any error) stops every process the demo started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from clockfleet import devstack
from clockfleet.demo_fleet import ADDRESSES, AFTER, BEFORE, REPO, SKEW_S, DemoAgent, render
from clockfleet.demo_fleet import agents as demo_agents
from clockfleet.demo_procs import Processes, StepFailed, clockfleet_argv, tail
from clockfleet.demo_view import (
    View,
    changes,
    plain_table,
    problems,
    table,
    view_from_status_json,
    with_tried,
)
from clockfleet.devstack.mosquitto import ShippedBroker

KEY_ID = "demo"


def say(message: str) -> None:
    # Never let a closed terminal (Ctrl-C in `script`, a closed ssh session) stop the
    # clean-up that follows: lost log lines are better than orphaned daemons.
    with contextlib.suppress(OSError):
        print(f"{datetime.now(UTC):%H:%M:%S} demo: {message}", flush=True)


@dataclass
class Settings:
    run_for: float | None  # None: until Ctrl-C, with a live screen
    change_after: float
    rundir: Path

    @property
    def interactive(self) -> bool:
        return self.run_for is None


def _number(env: dict[str, str], name: str) -> float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"demo: {name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise SystemExit(f"demo: {name} must be more than 0 seconds")
    return value


def settings_from_env(env: dict[str, str]) -> Settings:
    run_for = _number(env, "DEMO_FOR")
    change_after = _number(env, "DEMO_CHANGE_AFTER")
    if change_after is None:
        change_after = 20.0 if run_for is None else min(20.0, 0.4 * run_for)
    if run_for is not None and change_after >= run_for:
        raise SystemExit(
            f"demo: DEMO_CHANGE_AFTER={change_after:g} must be less than DEMO_FOR={run_for:g}"
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = REPO / "run" if (REPO / "pyproject.toml").exists() else Path.cwd() / "run"
    rundir = Path(env["DEMO_RUNDIR"]) if env.get("DEMO_RUNDIR") else base / f"demo-{stamp}"
    return Settings(run_for, change_after, rundir.resolve())


@dataclass
class Stack:
    """Everything the demo started, and how to reach it."""

    rundir: Path
    broker: ShippedBroker
    signing_key: Path
    trust_key: Path
    fleet_file: Path
    collector_url: str
    prometheus_url: str
    servers: dict[str, tuple[str, int]]
    agents: list[DemoAgent] = field(default_factory=list)

    def as_(self, identity: str, *, tls: bool = False) -> list[str]:
        """Connection flags for one of the broker's identities (agents: over TLS, as from
        another host; the programs on the broker's host: its plain loopback listener)."""
        return self.broker.login(identity, tls=tls)

    def server_names(self) -> dict[tuple[str, int], str]:
        return {hp: name.lower().replace("_", "-") for name, hp in self.servers.items()}


# --- starting things, one step each -----------------------------------------------------


def start_broker(procs: Processes, rundir: Path, agents: list[DemoAgent]) -> ShippedBroker:
    """broker/mosquitto.conf as shipped, on loopback ports: identities written by
    broker/clockfleet-identities, broker/acl, TLS with a throw-away CA."""
    started: list[ShippedBroker] = []

    def launch() -> devstack.Daemon:
        started.append(devstack.start_shipped_mosquitto(rundir / "broker", [a.id for a in agents]))
        return started[0].daemon

    procs.daemon(
        "mosquitto (broker/mosquitto.conf as shipped: identities, ACL, TLS)",
        launch,
        rundir / "broker" / "mosquitto" / "mosquitto.log",
    )
    broker = started[0]
    say(
        f"broker identities (publisher, collector, operator, one per agent) in "
        f"{broker.identities}; agents connect over TLS (test CA {broker.ca_file})"
    )
    return broker


def start_ntp_servers(procs: Processes, rundir: Path) -> dict[str, tuple[str, int]]:
    servers: dict[str, tuple[str, int]] = {}
    for name, fake in (("GOOD_A", None), ("GOOD_B", None), ("SKEWED", SKEW_S)):
        sdir = rundir / f"ntp-{name.lower().replace('_', '-')}"
        what = f"chronyd NTP server {name.lower().replace('_', '-')}" + (
            f" (libfaketime: clock {fake:+g} s)" if fake else ""
        )
        d = procs.daemon(
            what,
            lambda sdir=sdir, fake=fake, addr=ADDRESSES[name]: devstack.start_chronyd_server(
                sdir, address=addr, fake_offset_s=fake
            ),
            sdir / "chronyd.log",
        )
        servers[name] = (d.host, d.port)
    servers["SILENT"] = procs.silent_udp(ADDRESSES["SILENT"])
    return servers


def make_key(procs: Processes, rundir: Path) -> tuple[Path, Path]:
    keys = rundir / "keys"
    procs.run("keygen", ["keygen", "--out", str(keys), "--key-id", KEY_ID])
    key, pub = keys / f"{KEY_ID}.key", keys / f"{KEY_ID}.pub"
    if not key.exists() or not pub.exists():
        raise StepFailed(f"clockfleet keygen did not write {key} and {pub}")
    say(f"created the signing key {key} (agents trust {pub})")
    return key, pub


def publish(procs: Processes, stack: Stack, template: Path, step: str) -> None:
    stack.fleet_file.write_text(render(template, stack.servers))
    # Keep each rendered version for the curious: diff fleet.before.yaml fleet.after.yaml
    (stack.rundir / f"fleet.{step}.yaml").write_text(stack.fleet_file.read_text())
    out = procs.run(
        f"publish-{step}",
        [
            "publish",
            "--config",
            str(stack.fleet_file),
            "--signing-key",
            str(stack.signing_key),
            # The demo's list holds a silent server on purpose (agents show it as a timeout):
            # the preflight prints it failing, and the demo publishes anyway.
            "--force",
            *stack.as_("publisher"),
        ],
    )
    say(f"published {template.relative_to(REPO)} (rendered as {stack.fleet_file}):")
    for line in out.strip().splitlines():
        print(f"    {line}", flush=True)


def start_collector(procs: Processes, stack_rundir: Path, conn: list[str]) -> str:
    port = devstack.free_port()
    child = procs.start("collector", ["collector", "--listen", f"127.0.0.1:{port}", *conn])
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not child.alive():
            break
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
            if r.status == 200:
                return url
        time.sleep(0.1)
    raise StepFailed(f"the collector did not serve {url}\n  log {child.log}:\n{tail(child.log)}")


def prometheus_config(collector_port: int) -> str:
    """config/prometheus.yml with the collector's port and absolute paths to the rules."""
    conf = yaml.safe_load((REPO / "config" / "prometheus.yml").read_text())
    # Relative rule files are relative to the config file, which the demo writes elsewhere.
    conf["rule_files"] = [str(REPO / "config" / f) for f in conf.get("rule_files") or []]
    conf.setdefault("global", {})["scrape_interval"] = "2s"
    conf["global"]["evaluation_interval"] = "2s"
    jobs = conf.get("scrape_configs") or []
    if not jobs:
        raise StepFailed("config/prometheus.yml has no scrape_configs")
    # The demo runs one collector: point the clockfleet job's targets at it, and scrape
    # often so the fleet's changes show within seconds.
    for job in jobs:
        if "scrape_timeout" in job:
            job["scrape_timeout"] = "2s"  # may not exceed the scrape interval
        for sc in job.get("static_configs") or []:
            sc["targets"] = [f"127.0.0.1:{collector_port}"]
    return yaml.safe_dump(conf, sort_keys=False)


def start_prometheus(procs: Processes, rundir: Path, collector_url: str) -> str:
    port = urllib.parse.urlsplit(collector_url).port or 0
    pdir = rundir / "prometheus"
    text = prometheus_config(port)
    d = procs.daemon(
        "prometheus (config/prometheus.yml, rules config/alerts.yml)",
        lambda: devstack.start_prometheus(pdir, text),
        pdir / "prometheus.log",
    )
    return f"http://{d.host}:{d.port}"


def start_agents(procs: Processes, stack: Stack) -> None:
    for a in stack.agents:
        adir = agent_dir(stack, a)
        procs.start(
            f"agent-{a.id}",
            [
                "agent",
                "--id",
                a.id,
                "--region",
                a.region,
                "--backend",
                "observe",
                "--state-dir",
                str(adir / "state"),
                "--tz-root",
                str(adir / "tz-root"),
                "--trust-key",
                str(stack.trust_key),
                "--startup-delay",
                "1",
                *stack.as_(a.id, tls=True),
            ],
        )


def start(procs: Processes, settings: Settings) -> Stack:
    rundir = settings.rundir
    agents = demo_agents(BEFORE)
    broker = start_broker(procs, rundir, agents)
    servers = start_ntp_servers(procs, rundir)
    key, pub = make_key(procs, rundir)
    stack = Stack(
        rundir=rundir,
        broker=broker,
        signing_key=key,
        trust_key=pub,
        fleet_file=rundir / "fleet.yaml",
        collector_url="",
        prometheus_url="",
        servers=servers,
        agents=agents,
    )
    publish(procs, stack, BEFORE, "before")
    stack.collector_url = start_collector(procs, rundir, stack.as_("collector"))
    stack.prometheus_url = start_prometheus(procs, rundir, stack.collector_url)
    start_agents(procs, stack)
    return stack


# --- watching ---------------------------------------------------------------------------


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


def agent_dir(stack: Stack, agent: DemoAgent) -> Path:
    return stack.rundir / "agents" / agent.id


def prometheus_view(url: str) -> str:
    """One line: does Prometheus scrape the collector, and which alerts are pending/firing."""

    def get(path: str) -> dict:
        with urllib.request.urlopen(url + path, timeout=2) as r:
            return json.loads(r.read())

    try:
        up = get("/api/v1/query?query=" + urllib.parse.quote('up{job="clockfleet-collector"}'))
        alerts = get("/api/v1/alerts")["data"]["alerts"]
    except (OSError, ValueError, KeyError) as exc:
        return f"prometheus: not answering ({exc})"
    samples = up.get("data", {}).get("result", [])
    if not samples:
        scraping = "no scrape of the collector yet"
    else:
        scraping = "scraping the collector" if samples[0]["value"][1] == "1" else "collector DOWN"
    if not alerts:
        return f"prometheus: {scraping}; no alerts"
    names = sorted(
        f"{a['labels'].get('alertname')} {a['state']}"
        + (f" ({a['labels']['agent']})" if "agent" in a["labels"] else "")
        for a in alerts
    )
    return f"prometheus: {scraping}; alerts: {', '.join(names)}"


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


def watch(procs: Processes, stack: Stack, settings: Settings) -> View:
    """Show the fleet until DEMO_FOR runs out (or Ctrl-C); publish the change on the way."""
    t0 = time.monotonic()
    changed = False
    view = View()
    names = stack.server_names()
    live = None
    if settings.interactive:
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        live = Live(table(view, names), refresh_per_second=4, screen=False)
        width = live.console.width
        live.start()
    events: list[str] = []
    last_error = ""
    prom_line, prom_at = "prometheus: (first scrape within ~5 s)", 0.0
    try:
        while True:
            elapsed = time.monotonic() - t0
            if settings.run_for is not None and elapsed >= settings.run_for:
                break
            if dead := procs.dead():
                raise StepFailed("a process stopped on its own:\n" + "\n".join(dead))
            if not changed and elapsed >= settings.change_after:
                if live is not None:
                    live.stop()
                say(
                    "changing the lists: us-east gets a silent and a skewed server first, "
                    "eu-west is reordered"
                )
                publish(procs, stack, AFTER, "after")
                changed = True
                if live is not None:
                    live.start()
            if live is not None and time.monotonic() - prom_at >= 5:
                prom_line, prom_at = prometheus_view(stack.prometheus_url), time.monotonic()
            new = read_view(stack)
            if new.error:
                lines = [new.error] if new.error != last_error else []
                last_error = new.error
            else:
                last_error = ""
                lines = changes(view, new, names)
                view = new
            for line in lines:
                stamped = f"{datetime.now(UTC):%H:%M:%S} {line}"
                if live is None:
                    print(f"{stamped}", flush=True)
                events = [*events, stamped][-8:]
            if live is not None:
                remaining = (
                    f"list change in {settings.change_after - elapsed:.0f} s"
                    if not changed
                    else "list changed; Ctrl-C stops the demo"
                )
                live.update(
                    Group(
                        table(view, names, width=width),
                        Text(remaining, style="bold"),
                        Text(prom_line),
                        Text("\n".join(events), style="dim"),
                    )
                )
            time.sleep(max(0.0, 1.0 - ((time.monotonic() - t0) % 1.0)))
    finally:
        if live is not None:
            with contextlib.suppress(OSError):
                live.stop()
    return view


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
