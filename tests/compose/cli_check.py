"""Is a `clockfleet ...` command line one the real program accepts?

Used for compose.yaml's service commands and the README's shell blocks. The subcommand's own
entry point is called with the arguments, and argparse is stopped right after a successful
parse (before the program does anything), so the flags are checked by the subcommand's real
parser, required arguments and choices included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import shlex
from unittest import mock

from clockfleet.cli import COMMANDS


class _Parsed(Exception):
    pass


def problem(argv: list[str]) -> str | None:
    """None when `clockfleet ARGV` parses; otherwise what is wrong, in one line."""
    if not argv:
        return "no subcommand"
    if argv[0] in ("-h", "--help", "--version") and len(argv) == 1:
        return None
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return f"{name!r} is not a clockfleet subcommand ({', '.join(COMMANDS)})"
    module_name, func, _ = COMMANDS[name]
    entry = getattr(importlib.import_module(module_name), func)
    original = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, args=None, namespace=None):
        result = original(self, args, namespace)
        raise _Parsed(result)

    err = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", parse_then_stop),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        try:
            entry(rest)
        except _Parsed as parsed:
            _, unknown = parsed.args[0]
            # parse_args() itself refuses unknown arguments; parse_known_args() callers get
            # them back, and clockfleet's commands take none.
            return f"unrecognised arguments {unknown}" if unknown else None
        except SystemExit as exc:
            if exc.code in (0, None):  # --help
                return None
            last = err.getvalue().strip().splitlines()
            return last[-1] if last else f"exit {exc.code}"
    return f"clockfleet {name} did not parse its arguments with argparse"


def clockfleet_lines(script: str) -> list[list[str]]:
    """Every `clockfleet ...` command in a shell script, joined over `\\` continuations,
    as argv lists without the leading `clockfleet` (and without `$ ` prompts)."""
    out = []
    joined = script.replace("\\\n", " ")
    for raw in joined.splitlines():
        line = raw.strip().removeprefix("$ ").strip()
        for part in line.split("&&"):
            words = shlex.split(part, comments=True) if part.strip() else []
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # VAR=value prefixes
            if words[:1] == ["sudo"]:
                words = words[1:]
            if words and words[0].rsplit("/", 1)[-1] == "clockfleet":
                out.append(words[1:])
    return out
