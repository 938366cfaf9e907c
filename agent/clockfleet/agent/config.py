"""The agent's settings: /etc/clockfleet/agent.yaml, overridden by command-line flags.

Every key is checked: an unknown key is an error naming it, because a typo must not silently
drop a setting. The YAML parser is imported only when a file is actually read, so
`clockfleet agent --once` without a config file does not pay for it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clockfleet.protocol.ids import is_valid_id, timezone_problem
from clockfleet.protocol.messages import (
    MAX_POLL_INTERVAL_S,
    MAX_RESYNC_JITTER_S,
    MIN_POLL_INTERVAL_S,
)

DEFAULT_CONFIG = Path("/etc/clockfleet/agent.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/clockfleet")
BACKENDS = ("observe", "chrony", "timesyncd", "system")


class ConfigError(ValueError):
    """A config file or flag value that cannot be used; the CLI prints it and exits 2."""


@dataclass
class AgentConfig:
    """Everything an agent needs that is not on the wire. Field names are the YAML keys."""

    id: str | None = None
    region: str | None = None  # fallback until a profile names one
    timezone: str | None = None  # fallback when neither profile nor list names one
    backend: str = "observe"
    backend_options: dict[str, Any] = field(default_factory=dict)
    state_dir: str | None = str(DEFAULT_STATE_DIR)
    trust_keys: list[str] = field(default_factory=list)
    tz_root: str | None = "/"  # None: leave the time zone alone
    use_timedatectl: bool | None = None  # None: the time zone module decides
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
    profile_grace_s: float = 2.0  # --once: longest wait for retained messages after SUBACK
    once_timeout_s: float = 10.0
    keepalive_s: int = 30
    log_level: str = "info"
    probe: dict[str, Any] = field(default_factory=dict)  # ProbeSettings fields
    # broker connection (same names as the common flags)
    broker: str | None = None
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None
    prefix: str | None = None

    def connection_defaults(self) -> dict[str, Any]:
        return {
            k: getattr(self, k)
            for k in ("broker", "username", "password_file", "ca_file", "cert", "key", "prefix")
            if getattr(self, k) is not None
        }


_FIELDS = {f for f in AgentConfig.__dataclass_fields__}
_FLOATS = {
    "startup_delay_s",
    "poll_interval_s",
    "resync_jitter_s",
    "retry_min_s",
    "retry_max_s",
    "reconnect_min_s",
    "reconnect_max_s",
    "trust_offset_s",
    "profile_grace_s",
    "once_timeout_s",
}
_STRINGS = {
    "id",
    "region",
    "timezone",
    "backend",
    "state_dir",
    "tz_root",
    "log_level",
    "broker",
    "username",
    "password_file",
    "ca_file",
    "cert",
    "key",
    "prefix",
}


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
    cfg = AgentConfig()
    for key, value in data.items():
        if key not in _FIELDS:
            raise ConfigError(f"{source}: unknown key {key!r}")
        if value is None:
            setattr(cfg, key, None)
            continue
        if key in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: {key} must be a number, not {value!r}")
            value = float(value)
        elif key in _STRINGS:
            if not isinstance(value, str):
                raise ConfigError(f"{source}: {key} must be a string, not {value!r}")
        elif key == "keepalive_s":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{source}: keepalive_s must be an integer")
        elif key == "use_timedatectl":
            if not isinstance(value, bool):
                raise ConfigError(f"{source}: use_timedatectl must be true or false")
        elif key == "trust_keys":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{source}: trust_keys must be a list of paths")
        elif key in ("probe", "backend_options") and not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping")
        setattr(cfg, key, value)
    return cfg


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
    if getattr(args, "timeout", None) is not None:
        cfg.once_timeout_s = args.timeout
    if getattr(args, "startup_delay", None) is not None:
        cfg.startup_delay_s = args.startup_delay
    return cfg


def validate(cfg: AgentConfig) -> AgentConfig:
    """Cross-field checks; raises ConfigError with the first problem found."""
    if cfg.id is None:
        raise ConfigError("no agent id: give --id or `id:` in the config file")
    if not is_valid_id(cfg.id):
        raise ConfigError(f"agent id {cfg.id!r} must match [A-Za-z0-9_-]{{1,64}}")
    if cfg.region is not None and not is_valid_id(cfg.region):
        raise ConfigError(f"region {cfg.region!r} must match [A-Za-z0-9_-]{{1,64}}")
    if cfg.timezone is not None and (problem := timezone_problem(cfg.timezone)):
        raise ConfigError(f"timezone: {problem}")
    if cfg.backend not in BACKENDS:
        raise ConfigError(f"backend {cfg.backend!r}: must be one of {', '.join(BACKENDS)}")
    if not MIN_POLL_INTERVAL_S <= cfg.poll_interval_s <= MAX_POLL_INTERVAL_S:
        raise ConfigError(
            f"poll_interval_s {cfg.poll_interval_s:g}: must be within "
            f"{MIN_POLL_INTERVAL_S}..{MAX_POLL_INTERVAL_S} (RFC 4330: not under 16 s)"
        )
    if not 0 <= cfg.resync_jitter_s <= MAX_RESYNC_JITTER_S:
        raise ConfigError(f"resync_jitter_s must be within 0..{MAX_RESYNC_JITTER_S}")
    for name in _FLOATS - {"poll_interval_s", "resync_jitter_s"}:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must not be negative")
    if cfg.retry_max_s < cfg.retry_min_s or cfg.reconnect_max_s < cfg.reconnect_min_s:
        raise ConfigError("retry_max_s/reconnect_max_s must not be below their minimum")
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level {cfg.log_level!r}: debug, info, warning or error")
    return cfg
