"""`clockfleet agent`: the host service, or one sync with `--once`.

Exit codes: 0 a good sync (`--once`) or a clean shutdown; 1 a failed sync (`--once`);
2 a bad argument or config file, or (`--once`) no broker and no cached list.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Optional

from clockfleet.agent import config as cfgmod
from clockfleet.agent import local_service
from clockfleet.agent.clock_backends import BACKEND_NAMES
from clockfleet.protocol import connection
from clockfleet.protocol.ids import ID_PATTERN

if TYPE_CHECKING:  # the agent's modules load only when a command needs them
    from clockfleet.agent.service import Agent

log = logging.getLogger("clockfleet.agent")

DESCRIPTION = """\
Keep this host on time: follow the region's signed NTP server list and this agent's profile
over MQTT, probe the servers in the operator's order, discipline the clock, set the time
zone, and report (retained, QoS 1) after every sync. Settings come from the config file;
flags override it.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clockfleet agent", description=DESCRIPTION)
    p.add_argument("--id", help=f"this agent's id ({ID_PATTERN}); config key `id`")
    p.add_argument(
        "--config",
        type=Path,
        help=f"YAML config file (default {cfgmod.DEFAULT_CONFIG}, skipped when absent; "
        "an explicit file must exist); unknown keys are errors",
    )
    p.add_argument("--region", help="region to follow until a profile names one")
    p.add_argument("--timezone", help="time zone when neither profile nor list names one")
    p.add_argument(
        "--backend",
        choices=BACKEND_NAMES,
        help="how to discipline the clock: observe (measure and report only), chrony, "
        "timesyncd, system (step/slew directly; needs CAP_SYS_TIME)",
    )
    p.add_argument(
        "--state-dir",
        help=f"where the last good list, profile, session and status.json live "
        f"(default {cfgmod.DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--trust-key",
        action="append",
        metavar="FILE_OR_DIR",
        help="public key (NAME.pub) or a directory of them; with any key, unsigned or badly "
        "signed lists and profiles are refused (repeatable); without any, signatures are "
        "not checked",
    )
    p.add_argument(
        "--nts-ca-file",
        metavar="PEM",
        help="CA certificates an NTS server's certificate may chain to, besides the system's "
        "store (config key `nts_ca_file`)",
    )
    p.add_argument("--tz-root", help="root under which to set the time zone (default /)")
    p.add_argument("--no-timezone", action="store_true", help="leave the host's time zone alone")
    p.add_argument(
        "--once",
        action="store_true",
        help="wait for the retained profile and list (or use the cached list), sync once, "
        "publish and print the report as JSON; exit 0 on a good sync, 1 otherwise. Where the "
        "agent service runs on the same state directory, ask it to sync now instead (one "
        "login per identity: a second one would knock the service off the broker)",
    )
    p.add_argument(
        "--timeout", type=float, help="--once: give up after this many seconds (default 10)"
    )
    p.add_argument(
        "--startup-delay",
        type=float,
        help="largest random delay before the first sync (RFC 4330; default 30 s)",
    )
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="default info"
    )
    connection.add_arguments(p, connection_file=False)  # agent.yaml holds these keys
    return p


def load_config(args: argparse.Namespace) -> cfgmod.AgentConfig:
    path = args.config or cfgmod.DEFAULT_CONFIG
    data = cfgmod.load_file(path, required=args.config is not None)
    cfg = cfgmod.from_mapping(data, str(path))
    return cfgmod.validate(cfgmod.apply_flags(cfg, args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args)
    except cfgmod.ConfigError as exc:
        print(f"clockfleet agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, cfg.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        agent = build_agent(cfg, args)
    except (connection.UsageError, cfgmod.ConfigError, ValueError) as exc:
        print(f"clockfleet agent: {exc}", file=sys.stderr)
        return 2
    if not agent.settings.trust:
        log.warning("no trust key configured: lists and profiles are accepted unsigned")
    if args.once:
        if cfg.state_dir and (pid := local_service.running_pid(Path(cfg.state_dir))):
            return ask_service(Path(cfg.state_dir), pid, cfg.once_timeout_s)
        from clockfleet.agent.once import run_once

        return run_once(agent, cfg.once_timeout_s)
    return run_service(agent)


def build_agent(cfg: cfgmod.AgentConfig, args: argparse.Namespace) -> Agent:
    from clockfleet.agent.backend_choice import make_backend
    from clockfleet.agent.probe import ProbeSettings
    from clockfleet.agent.service import Agent, AgentSettings
    from clockfleet.agent.state import StateDir
    from clockfleet.protocol import signing

    source = str(args.config or cfgmod.DEFAULT_CONFIG)
    conn = connection.settings_from_args(args, cfg.connection_defaults(), defaults_source=source)
    try:
        trust = signing.load_trust([Path(p) for p in cfg.trust_keys])
    except signing.KeyFileError as exc:
        raise cfgmod.ConfigError(f"trust key: {exc}") from None
    for p in cfg.trust_keys:
        if not Path(p).exists():
            raise cfgmod.ConfigError(f"trust key {p}: no such file or directory")
    if cfg.trust_keys and not trust:
        raise cfgmod.ConfigError(f"trust keys {cfg.trust_keys}: no *.pub key found")
    try:
        probe_settings = ProbeSettings(**cfg.probe) if cfg.probe else None
    except TypeError as exc:
        raise cfgmod.ConfigError(f"probe: {exc}") from None
    backend = make_backend(cfg.backend, **cfg.backend_options)
    problem = backend.check()
    if problem is not None:
        raise cfgmod.ConfigError(f"backend {cfg.backend}: {problem}")
    settings = AgentSettings(
        agent_id=cfg.id,  # type: ignore[arg-type]
        trust=trust,
        probe_settings=probe_settings,
        tz_root=Path(cfg.tz_root) if cfg.tz_root else None,
        time_setters_root=Path(cfg.time_setters_root) if cfg.time_setters_root else None,
        **cfg.tuning(),
    )
    if args.once:
        conn.connect_timeout_s = min(conn.connect_timeout_s, cfg.once_timeout_s)
    state = StateDir(Path(cfg.state_dir)) if cfg.state_dir else None
    return Agent(settings, conn, backend=backend, state=state, once=args.once)


def ask_service(state_dir: Path, pid: int, timeout_s: float) -> int:
    """`--once` beside the running service: it syncs, `--once` prints its report."""
    log.info("the agent service (pid %d) runs on %s: asking it to sync now", pid, state_dir)
    try:
        report = local_service.ask_to_sync(state_dir, pid, timeout_s)
    except PermissionError:
        print(
            f"clockfleet agent: the agent service (pid {pid}) runs on {state_dir}; only root "
            "or its own user may ask it to sync",
            file=sys.stderr,
        )
        return 2
    except ProcessLookupError:
        print(f"clockfleet agent: the agent service (pid {pid}) just stopped", file=sys.stderr)
        return 1
    if report is None:
        print(
            f"clockfleet agent: the agent service (pid {pid}) wrote no report within "
            f"{timeout_s:g} s",
            file=sys.stderr,
        )
        return 1
    print(report.decode())
    try:
        ok = json.loads(report).get("ok") is True
    except ValueError:
        ok = False
    return 0 if ok else 1


def run_service(agent: Agent) -> int:
    from clockfleet.agent.fleet import Fleet
    from clockfleet.agent.memory_trim import give_back_freed_memory

    lock = None
    if agent.state is not None:
        try:
            lock = local_service.hold(agent.state.path)
        except local_service.ServiceLockHeld as exc:
            print(f"clockfleet agent: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a full or read-only state directory: run all the same
            log.warning("no service lock in %s (%s)", agent.state.path, exc)
    fleet = Fleet(workers=2)
    stop = {"now": False}

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop["now"] = True
        fleet.call_soon_threadsafe(lambda: None)  # wake the selector at once

    def on_sync_request(signum: int, frame: Optional[FrameType]) -> None:
        # `clockfleet agent --once` on this host (local_service.py).
        log.info("agent %s: sync requested on this host (SIGUSR1)", agent.id)
        fleet.call_soon_threadsafe(agent.sync_now)

    def after_first_ack() -> None:
        agent.observers.on_acked = None
        give_back_freed_memory()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGUSR1, on_sync_request)
    agent.observers.on_acked = after_first_ack
    fleet.add(agent)
    log.info("agent %s starting (backend %s)", agent.id, agent.backend.name)
    # The service drives the loop on the main thread; a signal wakes it to stop.
    while not stop["now"]:
        fleet.run_until(lambda: stop["now"], 3600.0)
    log.info("agent %s stopping", agent.id)
    fleet.stop(timeout_s=3.0)
    if lock is not None:
        lock.close()
    return 0
