"""The profile summaries in BENCHMARKS.md name our files by their repository path, however
py-spy spelled them, and everything else by its last two parts (never a repository path)."""

from __future__ import annotations

from bench.profile_summary import frame_name
from tests.helpers import REPO


def test_a_module_py_spy_names_by_its_import_path_gets_its_repository_path():
    assert (
        frame_name("_run (clockfleet/agent/fleet.py:12)")
        == "_run (agent/clockfleet/agent/fleet.py)"
    )
    assert (
        frame_name("probe (clockfleet/ntp/exchange.py:3)") == "probe (clockfleet/ntp/exchange.py)"
    )


def test_an_absolute_path_inside_the_repository_is_made_relative_to_it():
    path = REPO / "collector" / "clockfleet" / "collector" / "ingest.py"
    assert frame_name(f"feed ({path}:40)") == "feed (collector/clockfleet/collector/ingest.py)"


def test_a_file_of_another_package_keeps_its_last_two_parts():
    frame = "loop (/opt/venv/lib/python3.11/site-packages/paho/mqtt/client.py:900)"
    assert frame_name(frame) == "loop (mqtt/client.py)"


def test_a_file_py_spy_names_by_its_last_parts_gets_its_repository_path():
    assert frame_name("_run (agent/fleet.py:35)") == "_run (agent/clockfleet/agent/fleet.py)"
    assert frame_name("burst (ntp/exchange.py:9)") == "burst (clockfleet/ntp/exchange.py)"
