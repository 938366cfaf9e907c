"""The operator's connection file: broker, identity and TLS settings kept out of every command
line (`--connection FILE`, env CLOCKFLEET_CONNECTION, else the first of
~/.config/clockfleet/operator.yaml and /etc/clockfleet/operator.yaml that exists).

    # ~/.config/clockfleet/operator.yaml
    broker: mqtts://broker.example.net:8883     # or a list: a cluster's nodes
    username: publisher
    password_file: publisher.password           # relative to this file's folder
    ca_file: ca.crt

The keys are the flags' names (`--password-file` is `password_file`); an unknown key is an
error naming it, so a typo never drops a setting. There is no `password` key: a password
lives in its own file (mode 0600), never in a command line, the environment or this file.
Whoever can write this file chooses where the commands send that password, so a file that
others than its owner (or root) can write is refused, as ssh refuses such a config.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

ENV_CONNECTION = "CLOCKFLEET_CONNECTION"
FILE_NAME = "operator.yaml"
KEYS = ("broker", "username", "password_file", "ca_file", "cert", "key", "prefix")
# Keys naming a file: relative to the connection file's folder.
PATH_KEYS = ("password_file", "ca_file", "cert", "key")
# Every key has an environment variable of its own: CLOCKFLEET_BROKER, CLOCKFLEET_USERNAME, ...
ENV_OF = {name: "CLOCKFLEET_" + name.upper() for name in KEYS}
MAX_BYTES = 64 * 1024
HELP = """\
Each setting: its flag, else its environment variable (CLOCKFLEET_BROKER, CLOCKFLEET_USERNAME,
CLOCKFLEET_PASSWORD_FILE, CLOCKFLEET_CA_FILE, CLOCKFLEET_CERT, CLOCKFLEET_KEY,
CLOCKFLEET_PREFIX), else the connection file, else the default. A password is only ever read
from a file (--password-file / password_file), never from the command line."""


class ConnectionFileError(ValueError):
    """A connection file that cannot be used; the command says why on one line (exit 2)."""


def default_files(environ: Mapping[str, str]) -> list[Path]:
    """Where a command looks when neither --connection nor CLOCKFLEET_CONNECTION names a
    file: the user's own first (XDG_CONFIG_HOME, else ~/.config), then the machine's."""
    out = []
    xdg = environ.get("XDG_CONFIG_HOME")
    home = environ.get("HOME")
    if xdg:
        out.append(Path(xdg) / "clockfleet" / FILE_NAME)
    elif home:
        out.append(Path(home) / ".config" / "clockfleet" / FILE_NAME)
    out.append(Path("/etc/clockfleet") / FILE_NAME)
    return out


def find(flag: Optional[str], environ: Mapping[str, str]) -> Optional[Path]:
    """The connection file to read: --connection, else CLOCKFLEET_CONNECTION (both must
    exist), else the first default that exists, else None. CLOCKFLEET_CONNECTION set to
    the empty string reads none (a script that wants only its own flags)."""
    if not flag and environ.get(ENV_CONNECTION) == "":
        return None
    named = flag or environ.get(ENV_CONNECTION)
    if named:
        path = Path(named)
        if not path.is_file():
            where = "--connection" if flag else ENV_CONNECTION
            raise ConnectionFileError(f"{where} {named}: no such file")
        return path
    for path in default_files(environ):
        if path.is_file():
            return path
    return None


def _check_owner(path: Path) -> None:
    if os.name != "posix":
        return
    st = path.stat()
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConnectionFileError(
            f"connection file {path}: writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); whoever writes it decides where the password "
            "goes: chmod go-w it"
        )
    if st.st_uid not in (0, os.getuid()):
        raise ConnectionFileError(
            f"connection file {path}: owned by uid {st.st_uid}, neither you nor root"
        )


def _value(path: Path, name: str, value: object) -> str:
    if (
        name == "broker"
        and isinstance(value, list)
        and value
        and all(isinstance(v, str) and v for v in value)
    ):
        return ",".join(value)  # a cluster's nodes, one per item
    if not isinstance(value, str) or not value:
        raise ConnectionFileError(f"connection file {path}: {name}: must be a non-empty string")
    if name in PATH_KEYS:
        return str(path.parent / value)  # an absolute value stays itself
    return value


def load(path: Path) -> dict[str, str]:
    """The settings in `path`, each key checked, file paths made absolute."""
    _check_owner(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConnectionFileError(f"connection file {path}: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConnectionFileError(f"connection file {path}: larger than {MAX_BYTES} bytes")
    import yaml  # only when there is a file: the agent never pays for it here

    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = str(exc).replace("\n", " ")
        raise ConnectionFileError(f"connection file {path}: not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConnectionFileError(f"connection file {path}: must be a mapping of keys to values")
    out = {}
    for name, value in data.items():
        if name == "password":
            raise ConnectionFileError(
                f"connection file {path}: `password` is not read; put the password in a file "
                "of its own (mode 0600) and name it with `password_file`"
            )
        if name not in KEYS:
            raise ConnectionFileError(
                f"connection file {path}: unknown key {name!r} (allowed: {', '.join(KEYS)})"
            )
        out[name] = _value(path, name, value)
    return out


class Layers:
    """Each setting's value from the first layer that has one, and where it came from."""

    def __init__(self, layers: list[tuple[str, Mapping[str, Any]]]) -> None:
        self.layers = layers

    def __call__(self, name: str) -> str | None:
        for _, values in self.layers:
            v = values.get(name)
            if v is not None:
                return str(v)
        return None

    def source(self, name: str) -> str:
        """How the user named the setting: `--ca-file`, `CLOCKFLEET_CA_FILE`, `FILE: ca_file`."""
        for where, values in self.layers:
            if values.get(name) is not None:
                if where == "flag":
                    return "--" + name.replace("_", "-")
                if where == "env":
                    return ENV_OF[name]
                return f"{where}: {name}"
        return name
