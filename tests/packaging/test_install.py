"""What a PBX installs: `pip install clockfleet` is the agent and nothing else; the other
programs come with extras. Built from this checkout into a fresh venv (its dependencies come
from the package index, as on any host)."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def run(*argv: str | Path, **kw) -> subprocess.CompletedProcess[str]:
    # Not from the checkout: `python -c` would put it first on sys.path.
    kw.setdefault("cwd", "/")
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, REPO)
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("clockfleet-*.whl")
    return built


@pytest.fixture(scope="module")
def plain(tmp_path_factory, wheel: Path) -> Path:
    """A venv with `pip install clockfleet` only; returns its bin directory."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=True)
    done = run(root / "bin" / "python", "-m", "pip", "install", "-q", wheel, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "bin"


def test_the_plain_install_runs_the_agent(plain: Path):
    done = run(plain / "clockfleet", "agent", "--help")
    assert done.returncode == 0 and "--once" in done.stdout


def test_the_plain_install_carries_none_of_the_other_programs_dependencies(plain: Path):
    for module in ("cryptography", "rich", "prometheus_client", "ntplib"):
        done = run(plain / "python", "-c", f"import {module}")
        assert done.returncode != 0, f"{module} is installed with the agent"


def test_the_plain_install_carries_no_test_or_demo_infrastructure(plain: Path):
    for module in ("clockfleet.devstack", "clockfleet.demo"):
        done = run(plain / "python", "-c", f"import {module}")
        assert done.returncode != 0, f"{module} ships with the agent"


def test_another_program_without_its_extra_names_the_extra_to_install(plain: Path):
    done = run(plain / "clockfleet", "status", "--help")
    assert done.returncode == 2
    assert "pip install 'clockfleet[collector]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_all_extra_runs_every_subcommand(plain: Path, wheel: Path):
    done = run(plain / "python", "-m", "pip", "install", "-q", f"{wheel}[all]", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    for command in ("agent", "publish", "keygen", "collector", "status"):
        shown = run(plain / "clockfleet", command, "--help")
        assert shown.returncode == 0, (command, shown.stderr)
