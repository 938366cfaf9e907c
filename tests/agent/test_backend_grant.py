"""One parser decides the backend: what the package's generator asks (`python -m
clockfleet.agent.config --backend-of FILE`) is the agent's own loader, and the agent refuses
to run a backend its unit did not grant (CLOCKFLEET_UNIT_BACKEND). Under real systemd:
tests/hosts/test_privileges.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clockfleet.agent import config

BASE = "id: pbx-1\nbroker: mqtt://127.0.0.1:1883\n"


@pytest.mark.parametrize(
    ("text", "backend"),
    [
        # What the old sed pattern read as `system` (a quoted value spanning lines, a quoted
        # duplicate key) or as nothing (anchor, merge key, tag, comment, flow mapping).
        ('backend: observe\nusername: "x\nbackend: system"\n', "observe"),
        ("backend: system\n'backend': observe\n", "observe"),
        ("backend: &b chrony\n", "chrony"),
        ("<<: {backend: timesyncd}\n", "timesyncd"),
        ("backend: !!str chrony\n", "chrony"),
        ("backend: # observe\n  system\n", "system"),
        ("{backend: chrony}\n", "chrony"),
        ("", "observe"),  # the default
    ],
)
def test_the_backend_of_a_file_is_the_one_the_agents_loader_reads(tmp_path: Path, text, backend):
    path = tmp_path / "agent.yaml"
    path.write_text(text if text.startswith("{") else BASE + text)

    assert config.unit_backend(path) == backend
    cfg = config.from_mapping(config.load_file(path, required=True))
    assert cfg.backend == backend


@pytest.mark.parametrize(
    "text",
    ['backend: "system\n  tem"\n', "backend: ntpd\n", "backend: [system]\n", "bogus: 1\n", "- a\n"],
)
def test_a_file_the_agent_refuses_names_no_backend(tmp_path: Path, text):
    path = tmp_path / "agent.yaml"
    path.write_text(BASE + text if not text.startswith("-") else text)

    with pytest.raises(config.ConfigError):
        config.unit_backend(path)


def test_the_generators_command_prints_the_backend_or_fails_with_the_agents_reason(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(BASE + "backend: chrony\n")
    bad.write_text(BASE + "backend: ntpd\n")

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-I", "-m", "clockfleet.agent.config", "--backend-of", str(path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    ok, refused = run(good), run(bad)

    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "chrony\n", "")
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr.strip() == (
        "clockfleet agent: backend 'ntpd': must be one of observe, chrony, timesyncd, system"
    )


def configured(backend: str) -> config.AgentConfig:
    return config.from_mapping({"id": "pbx-1", "backend": backend})


def test_the_agent_refuses_a_backend_its_unit_did_not_grant_in_one_line():
    with pytest.raises(config.ConfigError) as refused:
        config.validate(configured("system"), {config.UNIT_BACKEND_ENV: "observe"})

    assert str(refused.value) == (
        "backend 'system', but this unit was started with backend 'observe''s privileges "
        "(agent.yaml changed since systemd last read it): run `systemctl daemon-reload` and "
        "start the agent again"
    )
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("environ", [{}, {config.UNIT_BACKEND_ENV: "chrony"}])
def test_the_agent_runs_its_backend_when_the_unit_grants_it_or_says_nothing(environ):
    # The control: the same config passes where the unit names its backend or no unit does
    # (a hand-made unit, `--once` from a shell).
    assert config.validate(configured("chrony"), environ).backend == "chrony"
