"""What the figures were measured on: they mean little without the machine beside them."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import sys
from importlib import metadata

import psutil


def _first_line(args: list[str], pattern: str = r"(\S.*)") -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(args, capture_output=True, text=True, timeout=5)
        m = re.search(pattern, out.stdout + out.stderr)
        if m:
            return m.group(1).strip()
    return "not installed"


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, str]:
    mem = psutil.virtual_memory().total
    return {
        "cores": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "ram": f"{mem / 2**30:.1f} GiB",
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version() + f" ({sys.executable})",
        "paho-mqtt": _package("paho-mqtt"),
        "ntplib": _package("ntplib"),
        "msgspec": _package("msgspec"),
        "mosquitto": _first_line(["mosquitto", "-h"], r"mosquitto version (\S+)"),
        "chrony": _first_line(["chronyd", "-v"], r"version (\S+)"),
        "ntpdig": _first_line(["ntpdig", "--version"], r"ntpsec-(\S+)"),
        "libfaketime": _first_line(
            ["dpkg-query", "-W", "-f", "${Version}", "libfaketime"], r"(\S+)"
        ),
    }
