"""The version the agent reports is the project's (the layout rules every program keeps are
in tests/test_layout.py)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "agent" / "clockfleet" / "agent"
MODULES = sorted(ROOT.glob("*.py"))


def test_the_package_version_is_the_projects():
    from clockfleet.protocol.version import __version__

    pyproject = (ROOT.parents[2] / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject
