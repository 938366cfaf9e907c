"""MQTT connection settings every command shares: broker URLs, identity, TLS, prefix.

paho connects to one host at a time and its reconnect backoff has no jitter, so the
rotation through a cluster's nodes and the jitter live here.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import os
import random
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.client import CallbackOnConnect_v2, ConnectFlags
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from clockfleet.protocol import connection_file as connection_file_mod
from clockfleet.protocol import session
from clockfleet.protocol.topics import DEFAULT_PREFIX

ENV_BROKER = "CLOCKFLEET_BROKER"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"


class UsageError(ValueError):
    """A bad command-line value: the command prints it on one line and exits 2."""


class BrokerUnreachable(ConnectionError):
    """No broker in the list accepted a connection (refused, unreachable or timed out).

    `reasons` holds one code per broker tried, in the order of the message's parts: a
    CONNACK refusal's name (`session.refusal`: "bad-credentials", "unsupported-protocol", ...),
    "unreachable" (no TCP connection), "tls" (the handshake failed) or "no-connack".
    """

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons


@dataclass(frozen=True)
class BrokerAddress:
    tls: bool
    host: str
    port: int

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass
class ConnectionSettings:
    brokers: list[BrokerAddress]
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert: str | None = None
    key: str | None = None
    prefix: str = DEFAULT_PREFIX
    connect_timeout_s: float = 5.0


def parse_brokers(spec: str) -> list[BrokerAddress]:
    """'mqtt://h:p,mqtts://h2' -> addresses; a cluster is a comma-separated list."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "://" not in part:
            part = "mqtt://" + part
        u = urlsplit(part)
        if u.scheme not in ("mqtt", "mqtts"):
            raise UsageError(f"broker {part!r}: scheme must be mqtt:// or mqtts://")
        if not u.hostname:
            raise UsageError(f"broker {part!r}: no host")
        try:
            port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        except ValueError:
            raise UsageError(f"broker {part!r}: bad port") from None
        out.append(BrokerAddress(u.scheme == "mqtts", u.hostname, port))
    if not out:
        raise UsageError("no broker given")
    return out


def command_parser(
    prog: str,
    description: str,
    *,
    epilog: str | None = None,
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """A command's argument parser, built the same way for every command that takes the
    broker arguments: its description and epilog printed as written (their line breaks
    and lists kept). The command adds its own arguments, then `add_arguments` the broker's.
    `parser_class`: an ArgumentParser subclass (the publisher's reports a bad argument on
    one line)."""
    return parser_class(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_arguments(parser: argparse.ArgumentParser, *, connection_file: bool = True) -> None:
    """The broker's flags. `connection_file`: the command also reads the operator's connection
    file and the per-setting environment (every command but the agent, whose own config file,
    agent.yaml, holds the same keys)."""
    g = parser.add_argument_group(
        "broker connection",
        connection_file_mod.HELP if connection_file else None,
    )
    g.add_argument(
        "--broker",
        default=None,
        help=f"mqtt://HOST:PORT or mqtts://HOST:PORT; comma-separate a cluster's nodes "
        f"(env {ENV_BROKER}; default {DEFAULT_BROKER})",
    )
    g.add_argument("--username", help="MQTT user name (the identity the broker's ACL knows)")
    g.add_argument("--password-file", help="file holding the MQTT password (first line)")
    g.add_argument("--ca-file", help="CA certificate to verify the broker's TLS certificate")
    g.add_argument("--cert", help="client certificate for TLS client authentication")
    g.add_argument("--key", help="private key of --cert")
    g.add_argument("--prefix", default=None, help=f"topic prefix (default {DEFAULT_PREFIX})")
    if connection_file:
        g.add_argument(
            "--connection",
            metavar="FILE",
            help=f"connection file (YAML, the keys are these flags' names: broker, username, "
            f"password_file, ...); default: env {connection_file_mod.ENV_CONNECTION}, else "
            "~/.config/clockfleet/operator.yaml, else /etc/clockfleet/operator.yaml",
        )


def settings_from_args(
    args: argparse.Namespace,
    defaults: dict[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    defaults_source: str = "config",
) -> ConnectionSettings:
    """The settings a command connects with.

    A command whose parser took --connection (`add_arguments`' default): each setting from
    its flag, else its environment variable (CLOCKFLEET_BROKER, CLOCKFLEET_USERNAME, ...),
    else the connection file, else the built-in default. Otherwise (the agent, programs
    building a Namespace of their own): the flag, else `defaults` (a config file's values),
    else CLOCKFLEET_BROKER for the broker. UsageError names the setting and where it came
    from (`defaults_source`: the config file's name)."""
    env = os.environ if environ is None else environ
    layers: list[tuple[str, Mapping[str, Any]]] = [("flag", vars(args))]
    if hasattr(args, "connection"):
        by_env = {k: env[v] for k, v in connection_file_mod.ENV_OF.items() if env.get(v)}
        layers.append(("env", by_env))
        try:
            found = connection_file_mod.find(args.connection, env)
            if found is not None:
                layers.append((str(found), connection_file_mod.load(found)))
        except connection_file_mod.ConnectionFileError as exc:
            raise UsageError(str(exc)) from None
    layers.append((defaults_source, defaults or {}))
    if not hasattr(args, "connection") and env.get(ENV_BROKER):
        layers.append(("env", {"broker": env[ENV_BROKER]}))
    return _settings(connection_file_mod.Layers(layers))


def _settings(pick: connection_file_mod.Layers) -> ConnectionSettings:
    spec = pick("broker") or DEFAULT_BROKER
    password = None
    if pw_file := pick("password_file"):
        try:
            password = Path(pw_file).read_text().splitlines()[0].strip()
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise UsageError(f"{pick.source('password_file')} {pw_file}: {why}") from None
        except IndexError:
            raise UsageError(f"{pick.source('password_file')} {pw_file}: empty") from None
    for name in ("ca_file", "cert", "key"):
        v = pick(name)
        if v and not Path(v).is_file():
            raise UsageError(f"{pick.source(name)} {v}: no such file")
    try:
        brokers = parse_brokers(spec)
    except UsageError as exc:
        raise UsageError(
            f"{pick.source('broker')}: {exc}" if pick("broker") else str(exc)
        ) from None
    return ConnectionSettings(
        brokers=brokers,
        username=pick("username"),
        password=password,
        ca_file=pick("ca_file"),
        cert=pick("cert"),
        key=pick("key"),
        prefix=(pick("prefix") or DEFAULT_PREFIX).rstrip("/"),
    )


def new_client(
    settings: ConnectionSettings,
    client_id: str = "",
    *,
    clean_session: bool = True,
    protocol: int = mqtt.MQTTv311,
    tls: bool | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> mqtt.Client:
    """A paho client with identity and TLS configured; not connected yet."""
    kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
    if protocol != mqtt.MQTTv5:
        kwargs["clean_session"] = clean_session
    client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    use_tls = any(b.tls for b in settings.brokers) if tls is None else tls
    if use_tls:
        client.tls_set_context(ssl_context or tls_context(settings))
    return client


def unguessable_client_id(base: str, password: str | None) -> str:
    """`base` plus a suffix that only the holder of the identity's password can compute.

    Mosquitto as shipped binds client ids to user names, but NATS 2.9 cannot: there, any
    identity that knows a client id takes over that session (broker/nats/README.md). A
    client id nobody else can compute closes that door wherever the broker leaves it open.
    No password (an open demo broker): the plain id.
    """
    if not password:
        return base
    tag = hmac.new(password.encode(), b"clockfleet client id", hashlib.sha256).hexdigest()
    return f"{base}-{tag[:12]}"


def tls_context(settings: ConnectionSettings) -> ssl.SSLContext:
    """The client side of TLS: the configured CA (else the system's), and our certificate."""
    ctx = ssl.create_default_context(cafile=settings.ca_file)
    if settings.cert:
        ctx.load_cert_chain(settings.cert, settings.key)
    return ctx


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (1.1.0 and later); Python exports no name for it.
_NO_CHECK_TIME = 0x200000
# X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED: what a far-off clock causes.
_CERT_TIME_ERRORS = frozenset({9, 10})


def is_cert_time_error(exc: BaseException) -> bool:
    """The handshake failed only on a certificate's validity dates (by OpenSSL's code)."""
    return isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_code in _CERT_TIME_ERRORS


def set_cert_time_check(ctx: ssl.SSLContext, on: bool) -> None:
    """Check certificates' validity dates (on), or verify the chain without them (off).

    Off is for a host whose clock cannot be trusted yet, as chrony's `nocerttimecheck` does
    for NTS: a clock years behind sees every certificate as not yet valid, and the host could
    never fetch the list that would correct it. Signatures, chain and host name are still
    checked; the lists themselves are authenticated by their own signatures.
    """
    flags = int(ctx.verify_flags)
    ctx.verify_flags = ssl.VerifyFlags(flags & ~_NO_CHECK_TIME if on else flags | _NO_CHECK_TIME)


def cert_time_checked(ctx: ssl.SSLContext) -> bool:
    return not int(ctx.verify_flags) & _NO_CHECK_TIME


def rotation(brokers: list[BrokerAddress]) -> list[BrokerAddress]:
    """The brokers in a random order, so a cluster's clients spread over its nodes."""
    order = list(brokers)
    random.shuffle(order)
    return order


class Rotation:
    """Which broker of a cluster's list to try next, and how long to wait before it.

    The list is shuffled once, so a cluster's clients spread over its nodes. After a failure
    the next node is tried; the delay grows per round of the whole list, not per node (with
    full jitter: `session.backoff_delay`), so when one node of three dies its clients move on
    at once instead of after a doubled wait. Every program that connects uses this."""

    def __init__(self, brokers: list[BrokerAddress]) -> None:
        self.order = rotation(brokers)
        self._next = 0
        self.failures = 0  # since the last success

    def next(self) -> BrokerAddress:
        addr = self.order[self._next % len(self.order)]
        self._next += 1
        return addr

    def failed(self) -> None:
        self.failures += 1

    def succeeded(self) -> None:
        self.failures = 0

    @property
    def tried_every_node(self) -> bool:
        return self.failures >= len(self.order)

    def delay(self, min_s: float, max_s: float, rng: Any = random) -> float:
        """How long to wait before the next attempt, after `failures` in a row."""
        rounds = max(0, self.failures - 1) // len(self.order)
        return session.backoff_delay(rounds, min_s, max_s, rng)


def connect_blocking(
    client: mqtt.Client,
    settings: ConnectionSettings,
    *,
    timeout_s: float | None = None,
    keepalive: int = 30,
    clean_start: bool | int = mqtt.MQTT_CLEAN_START_FIRST_ONLY,
    properties: object | None = None,
    same_everywhere: frozenset[str] = frozenset(),
) -> BrokerAddress:
    """Connect to the first broker that answers with a good CONNACK and start paho's loop.

    `same_everywhere`: refusals every node of the list would give alike (a cluster refusing
    MQTT 5): after the first of them the other nodes are not tried. Raises BrokerUnreachable
    naming each broker tried and why it failed.
    """
    timeout = settings.connect_timeout_s if timeout_s is None else timeout_s
    kwargs: dict[str, Any] = {"keepalive": keepalive}
    if client.protocol == mqtt.MQTTv5:
        kwargs["clean_start"] = clean_start
        if properties is not None:
            kwargs["properties"] = properties
    errors = []
    reasons: list[str] = []
    for addr in rotation(settings.brokers):
        failed = _connect_one(client, addr, timeout, kwargs)
        if failed is None:
            return addr
        error, reason = failed
        errors.append(f"{addr}: {error}")
        reasons.append(reason)
        if reason in same_everywhere:
            break
    raise BrokerUnreachable("; ".join(errors), tuple(reasons))


def _connect_one(
    client: mqtt.Client, addr: BrokerAddress, timeout: float, kwargs: dict[str, Any]
) -> tuple[str, str] | None:
    """One broker: None once its CONNACK is good (paho's loop running, the client's own
    on_connect called), else (what went wrong, its reason code for BrokerUnreachable)."""
    done = threading.Event()
    result: dict[str, ReasonCode] = {}

    def on_connect(
        c: mqtt.Client, ud: Any, flags: ConnectFlags, rc: ReasonCode, props: Properties | None
    ) -> None:
        result["rc"] = rc
        done.set()

    previous = client.on_connect
    client.on_connect = on_connect
    try:
        client.connect(addr.host, addr.port, **kwargs)
    except (OSError, ssl.SSLError) as exc:
        client.on_connect = previous
        return str(exc), "tls" if isinstance(exc, ssl.SSLError) else "unreachable"
    client.loop_start()
    ok = done.wait(timeout)
    client.on_connect = previous
    rc = result.get("rc")
    if ok and rc is not None and not rc.is_failure:
        if previous is not None:  # every client here is made with CallbackAPIVersion 2
            on_connect_v2 = cast(CallbackOnConnect_v2, previous)
            on_connect_v2(client, client.user_data_get(), ConnectFlags(False), rc, None)
        return None
    client.loop_stop()
    with contextlib.suppress(Exception):
        client.disconnect()
    if not ok:
        return f"no CONNACK within {timeout:g} s", "no-connack"
    return str(rc), session.refusal(rc) or "unspecified"
