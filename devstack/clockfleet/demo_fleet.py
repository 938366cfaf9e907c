"""The demo's fleet: which agents run, which NTP servers exist, and the fleet files.

`config/fleet.demo.yaml` and `config/fleet.demo.after.yaml` are ordinary operator files
except that NTP hosts and ports are `${NAME_HOST}` / `${NAME_PORT}` placeholders: the demo's
servers get free ports when it starts. `render()` fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

import yaml

REPO = Path(__file__).resolve().parents[2]  # devstack/clockfleet/demo_fleet.py
BEFORE = REPO / "config" / "fleet.demo.yaml"
AFTER = REPO / "config" / "fleet.demo.after.yaml"

# Each NTP server gets its own loopback address (chrony keys sources by IP, not port); these
# sit far above the addresses tests hand out (127.0.0.10 upwards), though a clash would be
# harmless: every server also has its own free port.
ADDRESSES = {
    "GOOD_A": "127.0.0.201",
    "GOOD_B": "127.0.0.202",
    "SKEWED": "127.0.0.203",
    "SILENT": "127.0.0.204",
}
SKEW_S = 3.0  # the skewed server's clock runs this far ahead (libfaketime)


@dataclass(frozen=True)
class DemoAgent:
    id: str
    region: str
    timezone: str


def agents(path: Path = BEFORE) -> list[DemoAgent]:
    """The agents the demo runs: one per profile in the fleet file."""
    data = yaml.safe_load(path.read_text())
    return [
        DemoAgent(aid, prof["region"], prof.get("timezone", ""))
        for aid, prof in (data.get("agents") or {}).items()
    ]


def render(template: Path, servers: dict[str, tuple[str, int]]) -> str:
    """The template with every NAME_HOST / NAME_PORT filled in; a missing one is an error."""
    values: dict[str, object] = {}
    for name, (host, port) in servers.items():
        values[f"{name}_HOST"] = host
        values[f"{name}_PORT"] = port
    return Template(template.read_text()).substitute(values)


def region_servers(text: str) -> dict[str, list[tuple[str, int]]]:
    """region -> [(host, port)] of a rendered fleet file, for the demo's own log lines."""
    data = yaml.safe_load(text)
    return {
        rid: [(s["host"], int(s.get("port", 123))) for s in region["servers"]]
        for rid, region in data["regions"].items()
    }
