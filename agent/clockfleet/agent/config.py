"""The agent's settings: /etc/clockfleet/agent.yaml, overridden by command-line flags.

Every key is checked: an unknown key is an error naming it, because a typo must not silently
drop a setting. The YAML parser is imported only when a file is actually read, so
`clockfleet agent --once` without a config file does not pay for it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import msgspec

from clockfleet.agent.clock_backends import BACKEND_NAMES
from clockfleet.protocol.ids import ID_PATTERN, is_valid_id, timezone_problem
from clockfleet.protocol.messages import (
    MAX_POLL_INTERVAL_S,
    MAX_RESYNC_JITTER_S,
    MIN_POLL_INTERVAL_S,
)

DEFAULT_CONFIG = Path("/etc/clockfleet/agent.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/clockfleet")
# Set by the packaged unit (observe) and each backend's drop-in: the backend whose privileges
# systemd gave this process. The agent refuses to run another one (validate()).
UNIT_BACKEND_ENV = "CLOCKFLEET_UNIT_BACKEND"


class ConfigError(ValueError):
    """A config file or flag value that cannot be used; the CLI prints it and exits 2."""


class Tuning(msgspec.Struct, kw_only=True):
    """The knobs of a running agent: one definition and one default each, shared by
    agent.yaml (`AgentConfig`, where they are keys) and the agent itself (`AgentSettings`)."""

    region: Optional[str] = None  # fallback until a profile names one
    timezone: Optional[str] = None  # fallback when neither profile nor list names one
    use_timedatectl: Optional[bool] = None  # None: the time zone module decides
    # RFC 4330 §10: a random delay at start-up so a data centre's reboot does not hit one
    # server at once; the actual delay is uniform in 0..startup_delay_s.
    startup_delay_s: float = 30.0
    poll_interval_s: float = 3600.0  # until a list says otherwise
    resync_jitter_s: float = 30.0  # until a list says otherwise
    retry_min_s: float = 16.0  # first retry after a failed sync (then doubling, jittered)
    retry_max_s: float = 1024.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    trust_offset_s: float = 0.5  # status.json: trustworthy only while |residual offset| <=
    keepalive_s: int = 30
    profile_grace_s: float = 2.0  # --once: longest wait for retained messages after the fence
    # `cmd` resync: at most one per this many seconds (RFC 4330's floor), and a command older
    # than cmd_max_age_s (queued while the agent was away) is dropped, once this host's clock
    # is good enough to tell its age.
    cmd_min_interval_s: float = 16.0
    cmd_max_age_s: float = 300.0
    # Run after the agent changed the host's zone (e.g. a PBX reload: a running daemon may
    # keep the old zone, docs/timezones.md): an argv list, never a shell line.
    zone_change_command: Optional[list[str]] = None
    zone_change_timeout_s: float = 30.0
    # CA certificates (PEM) an NTS-KE server's certificate may chain to, besides the system's
    # store; the chrony backend hands it to chronyd as `ntstrustedcerts` (docs/nts.md).
    nts_ca_file: Optional[str] = None

    def tuning(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in Tuning.__struct_fields__}


class AgentConfig(Tuning, kw_only=True, forbid_unknown_fields=True):
    """agent.yaml: the tuning above plus what only the program around an agent needs.
    Field names are the YAML keys."""

    id: Optional[str] = None
    backend: str = "observe"
    backend_options: dict[str, Any] = msgspec.field(default_factory=dict)
    state_dir: Optional[str] = str(DEFAULT_STATE_DIR)
    trust_keys: list[str] = msgspec.field(default_factory=list)
    tz_root: Optional[str] = "/"  # None: leave the time zone alone
    # Where to look for other time setters (time_setters.py); None: do not look.
    time_setters_root: Optional[str] = "/"
    once_timeout_s: float = 10.0
    log_level: str = "info"
    probe: dict[str, Any] = msgspec.field(default_factory=dict)  # ProbeSettings fields
    # broker connection (same names as the common flags)
    broker: Optional[str] = None
    username: Optional[str] = None
    password_file: Optional[str] = None
    ca_file: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    prefix: Optional[str] = None

    def connection_defaults(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("broker", "username", "password_file", "ca_file", "cert", "key", "prefix")
            if getattr(self, k) is not None
        }


_SECONDS = [
    name
    for name, kind in zip(AgentConfig.__struct_fields__, msgspec.structs.fields(AgentConfig))
    if kind.type is float
]


def load_file(path: Path, *, required: bool) -> dict[str, Any]:
    """The YAML mapping in `path`; {} when it is absent and not required."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path}: no such file") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    import yaml  # only when there is a file: keeps `--once` without one fast

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must be a mapping of keys to values")
    return data


def from_mapping(data: dict[str, Any], source: str = "config") -> AgentConfig:
    """Check every key and value type; build the config."""
    unknown = [k for k in data if k not in AgentConfig.__struct_fields__]
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}")
    if isinstance(data.get("trust_keys"), str):
        data = {**data, "trust_keys": [data["trust_keys"]]}
    try:
        return msgspec.convert(data, AgentConfig)
    except msgspec.ValidationError as exc:
        # "Expected `float`, got `str` - at `$.poll_interval_s`" -> name the key first
        text = str(exc)
        where = text.rsplit(" - at `$.", 1)
        if len(where) == 2:
            text = f"{where[1].rstrip('`')}: {where[0]}"
        raise ConfigError(f"{source}: {text}") from None


def apply_flags(cfg: AgentConfig, args: argparse.Namespace) -> AgentConfig:
    """Command-line flags override the file."""
    for name in ("id", "region", "timezone", "backend", "state_dir", "tz_root", "log_level"):
        v = getattr(args, name, None)
        if v is not None:
            setattr(cfg, name, v)
    if getattr(args, "no_timezone", False):
        cfg.tz_root = None
    if getattr(args, "trust_key", None):
        cfg.trust_keys = list(args.trust_key)
    if getattr(args, "nts_ca_file", None):
        cfg.nts_ca_file = args.nts_ca_file
    if getattr(args, "timeout", None) is not None:
        cfg.once_timeout_s = args.timeout
    if getattr(args, "startup_delay", None) is not None:
        cfg.startup_delay_s = args.startup_delay
    return cfg


def validate(cfg: AgentConfig, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Cross-field checks; raises ConfigError with the first problem found.

    `environ` (default os.environ) may name the backend the unit granted (UNIT_BACKEND_ENV).
    """
    if cfg.id is None:
        raise ConfigError("no agent id: give --id or `id:` in the config file")
    if not is_valid_id(cfg.id):
        raise ConfigError(f"agent id {cfg.id!r} must match {ID_PATTERN}")
    if cfg.region is not None and not is_valid_id(cfg.region):
        raise ConfigError(f"region {cfg.region!r} must match {ID_PATTERN}")
    if cfg.timezone is not None and (problem := timezone_problem(cfg.timezone)):
        raise ConfigError(f"timezone: {problem}")
    if cfg.backend not in BACKEND_NAMES:
        raise ConfigError(f"backend {cfg.backend!r}: must be one of {', '.join(BACKEND_NAMES)}")
    if not MIN_POLL_INTERVAL_S <= cfg.poll_interval_s <= MAX_POLL_INTERVAL_S:
        raise ConfigError(
            f"poll_interval_s {cfg.poll_interval_s:g}: must be within "
            f"{MIN_POLL_INTERVAL_S}..{MAX_POLL_INTERVAL_S} (RFC 4330: not under 16 s)"
        )
    if not 0 <= cfg.resync_jitter_s <= MAX_RESYNC_JITTER_S:
        raise ConfigError(f"resync_jitter_s must be within 0..{MAX_RESYNC_JITTER_S}")
    for name in set(_SECONDS) - {"poll_interval_s", "resync_jitter_s"}:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    if cfg.retry_max_s < cfg.retry_min_s or cfg.reconnect_max_s < cfg.reconnect_min_s:
        raise ConfigError("retry_max_s/reconnect_max_s must not be below their minimum")
    if (problem := zone_command_problem(cfg)) is not None:
        raise ConfigError(problem)
    if cfg.nts_ca_file is not None and not Path(cfg.nts_ca_file).is_file():
        raise ConfigError(f"nts_ca_file {cfg.nts_ca_file}: no such file")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level {cfg.log_level!r}: debug, info, warning or error")
    problem = unit_grant_problem(cfg.backend, os.environ if environ is None else environ)
    if problem is not None:
        raise ConfigError(problem)
    return cfg


def zone_command_problem(cfg: AgentConfig) -> str | None:
    """zone_change_command must be an argv list (never run through a shell) of non-empty
    strings, its program an absolute path; its timeout within 0..600 s."""
    argv = cfg.zone_change_command
    if not 0 < cfg.zone_change_timeout_s <= 600:
        return "zone_change_timeout_s must be within 0..600 s (and not 0)"
    if argv is None:
        return None
    if not argv or not all(isinstance(a, str) and a and "\0" not in a for a in argv):
        return "zone_change_command: a list of non-empty strings (an argv, never a shell line)"
    if not argv[0].startswith("/"):
        return f"zone_change_command: {argv[0]!r} must be an absolute path"
    return None


def unit_grant_problem(backend: str, environ: Mapping[str, str]) -> str | None:
    """Why the agent must not run `backend` in a unit that granted another backend's
    privileges, or None (no unit said, or the same one).

    The package's generator decides the unit's privileges with unit_backend() below, the
    same loader as the agent's; they still differ when agent.yaml changed and no
    `daemon-reload` followed, or when the generator could not run the loader at boot. Then
    the agent would run one backend with another's privileges: it refuses instead.
    """
    granted = environ.get(UNIT_BACKEND_ENV)
    if granted is None or granted == backend:
        return None
    return (
        f"backend {backend!r}, but this unit was started with backend {granted!r}'s "
        "privileges (agent.yaml changed since systemd last read it): run "
        "`systemctl daemon-reload` and start the agent again"
    )


def unit_backend(path: Path) -> str:
    """The backend `clockfleet agent --config PATH` runs: what its unit must grant.

    The systemd generator and clockfleet-agent-config.service call this (`python -m
    clockfleet.agent.config --backend-of PATH`) so that one parser, the agent's own,
    decides. Raises ConfigError for a file the agent would refuse: the unit then grants
    nothing beyond `observe`'s (no privilege), and the agent stops on the same error.
    """
    cfg = from_mapping(load_file(path, required=True), str(path))
    if cfg.backend not in BACKEND_NAMES:
        raise ConfigError(f"backend {cfg.backend!r}: must be one of {', '.join(BACKEND_NAMES)}")
    return cfg.backend


def main(argv: list[str] | None = None) -> int:
    """`python -m clockfleet.agent.config --backend-of FILE`: print the backend FILE names
    (exit 0), or the reason the agent would refuse FILE on stderr (exit 1)."""
    p = argparse.ArgumentParser(prog="python -m clockfleet.agent.config")
    p.add_argument("--backend-of", type=Path, required=True, metavar="FILE")
    args = p.parse_args(argv)
    try:
        print(unit_backend(args.backend_of))
    except ConfigError as exc:
        print(f"clockfleet agent: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
