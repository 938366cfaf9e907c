"""The shipped systemd unit (agent/clockfleet-agent.service) and example agent.yaml.

The unit is checked with systemd-analyze where it exists (verify, offline security score) and
always by parsing it: hardening directives, and an ExecStart the real CLI accepts.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clockfleet.agent import cli
from clockfleet.agent import config as agent_config
from clockfleet.agent.backend_choice import make_backend
from clockfleet.ntp.checks import ProbeSettings

AGENT = Path(__file__).resolve().parents[2] / "agent"
UNIT = AGENT / "clockfleet-agent.service"
EXAMPLE = AGENT / "agent.yaml"


def service_section() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser["Service"]


def test_unit_runs_as_its_own_user_with_persistent_state():
    s = service_section()

    assert s["User"] == "clockfleet"
    assert s.get("DynamicUser", "no") == "no"
    assert s["StateDirectory"] == "clockfleet"
    assert s["ConfigurationDirectory"] == "clockfleet"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_SYS_TIME"),
        ("AmbientCapabilities", "CAP_SYS_TIME"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallFilter", "@system-service @clock"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
    ],
)
def test_unit_has_hardening_directive(key, value):
    assert service_section()[key] == value


def test_unit_does_not_protect_the_clock_it_may_have_to_set():
    assert service_section().get("ProtectClock", "no") == "no"


def test_execstart_is_a_command_line_the_agent_cli_accepts():
    argv = shlex.split(service_section()["ExecStart"])

    assert argv[:2] == ["/usr/local/bin/clockfleet", "agent"]
    args = cli.build_parser().parse_args(argv[2:])  # SystemExit(2) on an unknown flag
    assert args.config == Path("/etc/clockfleet/agent.yaml")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # verify insists ExecStart exists: point it at this checkout's installed clockfleet.
    exe = shutil.which("clockfleet", path=str(Path(sys.executable).parent))
    exe = exe or shutil.which("clockfleet")
    if exe is None:
        pytest.skip("clockfleet is not installed as a command")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/clockfleet", exe))

    r = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )

    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_offline_security_exposure_stays_low():
    r = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline unsupported: {r.stderr[-300:]}")

    assert float(m.group(1)) <= 3.0, r.stdout


def _commented_block(text: str, start: str) -> dict:
    """The YAML inside a commented block that follows the line containing `start`."""
    lines = text.splitlines()
    i = next(n for n, line in enumerate(lines) if start in line) + 1
    body = []
    while i < len(lines) and lines[i].startswith("#   "):
        body.append(lines[i][4:])
        i += 1
    return yaml.safe_load("\n".join(body))


def test_example_config_loads_and_validates():
    data = agent_config.load_file(EXAMPLE, required=True)

    cfg = agent_config.validate(agent_config.from_mapping(data, str(EXAMPLE)))

    assert make_backend(cfg.backend, **cfg.backend_options).name == cfg.backend


def test_example_config_mentions_every_setting_the_agent_reads():
    text = EXAMPLE.read_text()
    mentioned = set(re.findall(r"^#? ?([a-z_]+):", text, flags=re.M))

    missing = set(agent_config.AgentConfig.__struct_fields__) - mentioned

    assert not missing, f"agent.yaml does not document {sorted(missing)}"


def test_example_backend_options_are_the_backends_real_options():
    options = _commented_block(EXAMPLE.read_text(), "Options per backend")

    assert set(options) == {"chrony", "timesyncd", "system"}
    for name, opts in options.items():
        make_backend(name, **opts)  # ValueError on an option the backend does not have


def test_example_probe_options_are_the_probes_real_options():
    probe = _commented_block(EXAMPLE.read_text(), "# probe:")

    assert ProbeSettings(**probe) == ProbeSettings()
