"""compose.yaml and the Dockerfile, checked without a Docker engine: the file against the
Compose specification's JSON schema (kept in this folder, from check-jsonschema's vendored
copy), every file it mounts against the repository, every clockfleet command against the real
subcommand parsers, the embedded fleet file with the publisher's validator, the embedded chrony
config with chronyd's own parser, and the Dockerfile's COPY sources against the build context.

The services' identities, start order, healthchecks and images: test_compose_services.py; the
setup script, run for real: test_compose_setup.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from clockfleet.cli import COMMANDS
from clockfleet.publisher import fleetfile
from tests.compose.cli_check import problem
from tests.compose.composekit import (
    clockfleet_commands,
    services,
)
from tests.helpers import REPO

SCHEMA = Path(__file__).with_name("compose-spec.json")


def test_compose_file_is_valid_against_the_compose_specification(compose: dict):
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert errors == []


def test_schema_check_catches_a_misspelt_service_key(compose: dict):
    schema = json.loads(SCHEMA.read_text())
    broken = {**compose, "services": {**compose["services"], "x": {"imgae": "alpine"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_every_file_compose_mounts_exists_in_the_repository(compose: dict):
    missing = []
    for name, svc in services(compose).items():
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")) and not (REPO / source).exists():
                missing.append(f"{name}: {source}")
        build = svc.get("build")
        if isinstance(build, str) and not (REPO / build / "Dockerfile").exists():
            missing.append(f"{name}: build context {build} has no Dockerfile")
    for name, cfg in compose.get("configs", {}).items():
        if "file" in cfg and not (REPO / cfg["file"]).exists():
            missing.append(f"configs.{name}: {cfg['file']}")
    assert missing == []


def test_every_named_volume_a_service_uses_is_declared(compose: dict):
    declared = set(compose.get("volumes", {}))
    used = {
        vol.split(":", 1)[0]
        for svc in services(compose).values()
        for vol in svc.get("volumes", [])
        if isinstance(vol, str) and not vol.startswith((".", "/"))
    }
    assert used - declared == set()


def test_compose_runs_every_part_of_the_stack(compose: dict):
    commands = {argv[0] for _, argv in clockfleet_commands(compose)}
    assert {"publish", "collector", "agent", "keygen", "status"} <= commands
    images = {svc.get("image", "") for svc in services(compose).values()}
    assert any(i.startswith("eclipse-mosquitto:2") for i in images)
    assert any(i.startswith("prom/prometheus") for i in images)
    assert any(i.startswith("grafana/grafana") for i in images)
    agents = [a for _, a in clockfleet_commands(compose) if a[0] == "agent"]
    assert len(agents) >= 2


def test_every_clockfleet_command_in_compose_parses_with_the_real_subcommand(compose: dict):
    bad = [
        f"{svc}: clockfleet {' '.join(argv)}: {why}"
        for svc, argv in clockfleet_commands(compose)
        if (why := problem(argv))
    ]
    assert bad == []


def test_flag_check_refuses_a_flag_the_subcommand_does_not_have():
    assert problem(["publish", "--config", "f.yaml", "--no-such-flag"]) is not None
    assert problem(["publsh", "--config", "f.yaml"]) is not None
    assert problem(["publish", "--config", "f.yaml", "--dry-run"]) is None


def test_each_agent_and_program_gets_its_identity_password_file(compose: dict):
    for name, argv in clockfleet_commands(compose):
        if "--username" in argv:
            user = argv[argv.index("--username") + 1]
            secret = argv[argv.index("--password-file") + 1]
            assert secret == f"/secrets/{user}/password", name


def test_embedded_fleet_file_is_valid_for_the_publisher(compose: dict, tmp_path: Path):
    path = tmp_path / "fleet.yaml"
    path.write_text(compose["configs"]["fleet"]["content"])
    fleet = fleetfile.load(path)
    agents = [a for _, a in clockfleet_commands(compose) if a[0] == "agent"]
    agent_ids = {a[a.index("--id") + 1] for a in agents}
    assert agent_ids <= set(fleet.agents)
    assert [s.host for s in fleet.regions["docker"].servers] == ["ntp"]


@pytest.mark.skipif(shutil.which("chronyd") is None, reason="chrony is not installed")
def test_embedded_chrony_config_parses_with_chronyd(compose: dict, tmp_path: Path):
    conf = tmp_path / "server.conf"
    conf.write_text(compose["configs"]["chrony-server"]["content"])
    done = subprocess.run(["chronyd", "-p", "-f", str(conf)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_ntp_container_never_tries_to_set_the_clock(compose: dict):
    dockerfile = services(compose)["ntp"]["build"]["dockerfile_inline"]
    assert '"-x"' in dockerfile


def _mount_target(svc: dict, source: str) -> str:
    for vol in svc.get("volumes", []):
        if isinstance(vol, str) and vol.split(":")[0] == source:
            return vol.split(":")[1]
    raise AssertionError(f"{source} is not mounted")


def test_grafana_finds_the_provisioned_dashboards_where_they_are_mounted(compose: dict):
    grafana = services(compose)["grafana"]
    provider = REPO / "config/grafana/provisioning/dashboards/clockfleet.yml"
    paths = [p["options"]["path"] for p in yaml.safe_load(provider.read_text())["providers"]]
    assert _mount_target(grafana, "./config/grafana/dashboards") in paths
    assert _mount_target(grafana, "./config/grafana/provisioning") == "/etc/grafana/provisioning"


def test_grafana_datasource_and_prometheus_targets_name_compose_services(compose: dict):
    defined = services(compose)
    datasources = REPO / "config/grafana/provisioning/datasources/prometheus.yml"
    ds = yaml.safe_load(datasources.read_text())
    hosts = {re.match(r"https?://([^:/]+)", d["url"]).group(1) for d in ds["datasources"]}
    prom = yaml.safe_load((REPO / "config/prometheus.yml").read_text())
    targets = {
        t.split(":")[0]
        for job in prom["scrape_configs"]
        for sc in job.get("static_configs", [])
        for t in sc["targets"]
    }
    assert hosts | targets <= set(defined)


def test_prometheus_loads_the_rules_file_compose_mounts_next_to_its_config(compose: dict):
    prom_svc = services(compose)["prometheus"]
    conf_dir = Path(_mount_target(prom_svc, "./config/prometheus.yml")).parent
    prom = yaml.safe_load((REPO / "config/prometheus.yml").read_text())
    for rule_file in prom.get("rule_files", []):
        assert str(conf_dir / rule_file) == _mount_target(prom_svc, f"./config/{rule_file}")


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_dockerfile_copies_only_files_that_exist_and_reach_the_build_context():
    ignored = _dockerignore()
    problems = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        sources = [w for w in line.split()[1:-1] if not w.startswith("--")]
        for src in sources:
            if not (REPO / src).exists():
                problems.append(f"{src}: missing")
            elif src.rstrip("/").split("/")[0] in ignored:
                problems.append(f"{src}: excluded by .dockerignore")
    assert problems == []


def test_dockerfile_builds_on_pinned_python_311_slim_runs_as_non_root_into_clockfleet():
    text = (REPO / "Dockerfile").read_text()
    # The base is a build argument (compose.local.yaml builds on a local Debian base); its
    # default, what `docker build .` and compose.yaml use, is a release of the official image.
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["clockfleet"]' in text
    assert "pip install --no-cache-dir '.[all]'" in text  # the agent alone is the plain install


def test_image_copies_every_package_the_project_installs():
    text = (REPO / "Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.search(r"^packages = \[(.*)\]$", pyproject, re.M)
    assert packages, "pyproject.toml's wheel package list moved"
    package_dirs = {p.split("/")[0] for p in re.findall(r'"([^"]+)"', packages.group(1))}
    assert package_dirs == {"clockfleet", "agent", "collector", "publisher"}
    for d in package_dirs:
        assert f"COPY {d}/ {d}/" in text


@pytest.mark.timeout(180)
def test_what_the_dockerfile_copies_builds_a_package_with_every_subcommand(short_tmp: Path):
    """Copy exactly what the Dockerfile copies before `pip install .`, build the wheel there
    as pip install would, and find every subcommand's module in it."""
    src = short_tmp / "src"
    src.mkdir()
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("RUN pip install"):
            break
        if line.startswith("COPY "):
            for item in line.split()[1:-1]:
                path = REPO / item
                if path.is_dir():
                    shutil.copytree(path, src / item, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(path, src / item)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(short_tmp / "w"), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = (short_tmp / "w").glob("clockfleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module, _, _ in COMMANDS.values():
        assert module.replace(".", "/") + ".py" in names, module
    # the unit and example agent.yaml ship in the Debian package, not in the wheel
    assert not [n for n in names if n.endswith((".service", ".yaml"))]
