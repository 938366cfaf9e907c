"""Which command lines set the clock: the cron jobs and scripts the fleet replaces.

A PBX's crontab or cron.d often carries `ntpdate pool.ntp.org`, `sntp -s ...`, `chronyd -q
'server ...'` or `hwclock --hctosys`, and each of them steps the clock behind the back of
whatever disciplines it (the agent's chronyd, timesyncd, or the agent itself). This module
only reads text: `setters_in(line)` names every such command a shell line runs (time_setters.py
finds the lines). A program counts only with the options that make it set a clock: `sntp`
alone prints an offset, `chronyd -Q` and `ntpdate -q` only query, `hwclock -r` only reads.

Recognised (docs/hosts.md, "Other time setters"):
    ntpdate, ntpdate-debian    (not with -q)
    sntp, ntpdig               with -s/-S/--step/--slew
    chronyd                    with -q
    ntpd                       with -q (set the clock once and exit, as ntpdate)
    chronyc                    makestep or settime
    hwclock                    --hctosys/-s (the system clock from the RTC) or --systohc/-w
                               (the RTC from the system clock, which the next boot reads)
    date                       -s/--set
    timedatectl                set-time
    rdate                      unless -p alone (print only)
    htpdate                    with -s/-a/-x
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, Optional

# Shell operators and substitutions end a simple command; quotes and white space part words
# (so `sh -c "ntpdate pool; hwclock -w"` still shows both commands).
_COMMANDS = re.compile(r"[;&|`()\n]|\$\(")
_WORDS = re.compile(r"[\s'\"]+")
# What may stand before the program in a simple command: these commands, their options and
# numbers (`timeout 30`, `nice -n 10`), and variable assignments.
WRAPPERS = frozenset(
    ("sudo", "env", "nice", "ionice", "nohup", "exec", "timeout", "chronic", "setsid", "command")
) | frozenset(("sh", "bash", "dash", "if", "then", "else", "elif", "while", "until", "do", "!"))
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def _has(args: Sequence[str], *flags: str) -> bool:
    """A flag among `args`, also inside a cluster of short flags (`-su` has `-s`)."""
    letters = {f[1] for f in flags if len(f) == 2 and f[0] == "-" and f[1] != "-"}
    for arg in args:
        if arg in flags:
            return True
        if len(arg) > 2 and arg[0] == "-" and arg[1] != "-" and letters & set(arg[1:]):
            return True
    return False


def _rdate_sets(args: Sequence[str]) -> bool:
    return _has(args, "-s") or not _has(args, "-p")


class Rule(NamedTuple):
    name: str  # what the report calls it
    sets: Callable[[Sequence[str]], bool]  # whether these arguments make it set a clock


# By the program's base name.
RULES: dict[str, Rule] = {
    "ntpdate": Rule("ntpdate", lambda a: not _has(a, "-q")),
    "ntpdate-debian": Rule("ntpdate", lambda a: not _has(a, "-q")),
    "sntp": Rule("sntp", lambda a: _has(a, "-s", "-S", "--step", "--slew")),
    "ntpdig": Rule("ntpdig", lambda a: _has(a, "-s", "-S", "--step", "--slew")),
    "chronyd": Rule("chronyd -q", lambda a: _has(a, "-q")),
    "ntpd": Rule("ntpd -q", lambda a: _has(a, "-q")),
    "chronyc": Rule("chronyc makestep", lambda a: bool({"makestep", "settime"} & set(a))),
    "hwclock": Rule("hwclock", lambda a: _has(a, "-s", "--hctosys", "-w", "--systohc")),
    "date": Rule("date -s", lambda a: _has(a, "-s") or any(x.startswith("--set") for x in a)),
    "timedatectl": Rule("timedatectl set-time", lambda a: "set-time" in a),
    "rdate": Rule("rdate", _rdate_sets),
    "htpdate": Rule("htpdate", lambda a: _has(a, "-s", "-a", "-x")),
}


def setters_in(line: str) -> list[str]:
    """What each command in this shell line that sets a clock is called (RULES), in order,
    once each; [] for a line that sets none."""
    found: list[str] = []
    for command in _COMMANDS.split(line):
        words = [w for w in _WORDS.split(command) if w]
        for i, word in enumerate(words):
            name = word.rsplit("/", 1)[-1]
            rule = RULES.get(name)
            if rule is not None:
                if rule.sets(words[i + 1 :]) and rule.name not in found:
                    found.append(rule.name)
                break
            # Only the program a command runs counts, not an argument (`test -x .../ntpdate`).
            if not (
                name in WRAPPERS or word[0] == "-" or word.isdigit() or _ASSIGNMENT.match(word)
            ):
                break
    return found


def cron_command(line: str, *, system: bool) -> Optional[str]:
    """The command of one crontab line, or None for a comment, a blank line or a variable.
    `system`: /etc/crontab and /etc/cron.d, whose lines name a user before the command."""
    text = line.strip()
    if not text or text.startswith("#") or re.match(r"[A-Za-z_][A-Za-z0-9_]*\s*=", text):
        return None
    fields = 1 if text.startswith("@") else 5
    parts = text.split(None, fields + (1 if system else 0))
    if len(parts) <= fields + (1 if system else 0):
        return None
    return parts[-1]


def script_command(line: str) -> Optional[str]:
    """A line of a shell script run from cron or an interface hook; None for a comment."""
    text = line.strip()
    return None if not text or text.startswith("#") else text
