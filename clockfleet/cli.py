"""`clockfleet` — one entry point, one subcommand per program.

The dispatcher imports only the subcommand asked for, so `clockfleet agent --once` does not
pay for the collector's imports.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from importlib.util import find_spec

from clockfleet.protocol.version import __version__

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "publish": (
        "clockfleet.publisher.cli",
        "publish_main",
        "validate config/fleet.yaml, sign and publish changed region lists and profiles",
    ),
    "keygen": (
        "clockfleet.publisher.keygen",
        "keygen_main",
        "create an Ed25519 key pair for signing",
    ),
    "rollout": (
        "clockfleet.publisher.rollout_cli",
        "main",
        "watch, run, promote or abort canary rollouts of region lists (status, --json)",
    ),
    "agent": ("clockfleet.agent.cli", "main", "run the host service that keeps this host on time"),
    "collector": (
        "clockfleet.collector.cli",
        "main",
        "export agents' reports as Prometheus metrics on /metrics",
    ),
    "status": ("clockfleet.collector.status", "main", "show the fleet as a table (or --json)"),
    "retire": (
        "clockfleet.publisher.retire",
        "main",
        "take a decommissioned host out: revoke its identity, clear its retained topics",
    ),
}

# The extra each command needs beyond the agent's plain install, and what that extra brings.
EXTRAS = {
    "publish": "publisher",
    "keygen": "publisher",
    "rollout": "publisher",
    "retire": "publisher",
    "collector": "collector",
    "status": "collector",
}
EXTRA_MODULES = {"publisher": ("cryptography",), "collector": ("rich",)}

USAGE = """\
usage: clockfleet [--version] COMMAND [ARGS...]

Keep a fleet of hosts on the right time and time zone, managed from the centre over MQTT.

commands:
{commands}

Every command takes --broker mqtt://HOST:PORT (or mqtts://, or a comma-separated cluster;
env CLOCKFLEET_BROKER), --username, --password-file, --ca-file, --cert, --key, --prefix.
Run `clockfleet COMMAND --help` for a command's own options.
"""


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(), end="")
        return 0 if args else 2
    if args[0] == "--version":
        print(f"clockfleet {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"clockfleet: unknown command {name!r}; try `clockfleet --help`", file=sys.stderr)
        return 2
    module_name, func, _ = COMMANDS[name]
    # The plain install is the agent; the other programs come with extras (some of whose
    # modules are imported only when used): say which before anything starts.
    extra = EXTRAS.get(name)
    missing = [m for m in EXTRA_MODULES.get(extra or "", ()) if find_spec(m) is None]
    try:
        module = None if missing else importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        module, missing = None, [module_name]
    if module is None:
        hint = f" (pip install 'clockfleet[{extra}]')" if extra else ""
        print(f"clockfleet {name}: not installed here: no {missing[0]}{hint}", file=sys.stderr)
        return 2
    try:
        code = int(getattr(module, func)(args[1:]) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe shows here, not at exit
    except BrokenPipeError:
        # The reader went away (`clockfleet status --json | head`): no traceback for that.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
