"""compose.yaml, compose.local.yaml and the Dockerfile, checked without a Docker engine.

The stack is checked piece by piece: the file against the Compose specification's JSON schema
(kept in this folder, from check-jsonschema's vendored copy), every file it mounts against the
repository, every clockfleet command against the real subcommand parsers, each service's
broker identity and secrets, the start order and healthchecks `up --wait` needs, pinned image
tags, the embedded fleet file with the publisher's validator, the embedded chrony config with
chronyd's own parser, the setup script run for real (twice, and with broker names), and the
Dockerfile's COPY sources against the build context. Where the compose v2 plugin is installed
(it needs no engine for this), `docker compose config` merges compose.local.yaml over
compose.yaml, and the merged model is checked against compose.yaml's.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from clockfleet.protocol.version import __version__
from clockfleet.publisher import fleetfile
from tests.compose.cli_check import clockfleet_lines, problem
from tests.helpers import REPO

SCHEMA = Path(__file__).with_name("compose-spec.json")
COMPOSE = REPO / "compose.yaml"
LOCAL = REPO / "compose.local.yaml"
CLOCKFLEET_IMAGE = "clockfleet:0.1.0"
# Long-running services that serve something a healthcheck can ask; an agent serves nothing
# (its health is what it reports: the collector's metrics and the alert rules judge it).
WITH_HEALTHCHECK = {"mosquitto", "ntp", "collector", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


class _OverrideLoader(yaml.SafeLoader):
    """YAML with Compose's override tags: `!reset X` and `!override X` load as X."""


for _tag in ("!reset", "!override"):
    _OverrideLoader.add_constructor(
        _tag,
        lambda loader, node: (
            loader.construct_sequence(node)
            if isinstance(node, yaml.SequenceNode)
            else loader.construct_mapping(node)
            if isinstance(node, yaml.MappingNode)
            else loader.construct_scalar(node) or None
        ),
    )


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_OverrideLoader)


@pytest.fixture(scope="module")
def local() -> dict:
    return _load(LOCAL)


def _compose_config(*files: str, env: dict[str, str] | None = None) -> dict:
    """The model `docker compose config` makes of these files (every profile on), or a skip
    without the compose v2 plugin. It reads files only: no engine is asked."""
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI (the compose v2 plugin merges the files)")
    argv = ["docker", "compose", "--project-directory", str(REPO)]
    argv += [a for f in files for a in ("-f", str(REPO / f))]
    argv += ["--profile", "*", "config", "--format", "json"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CLOCKFLEET_", "COMPOSE_"))}
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
    )
    if done.returncode != 0 and "is not a docker command" in done.stderr:
        pytest.skip("no docker compose v2 plugin (tests/hosts/engine.sh installs it)")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def merged() -> dict:
    """compose.yaml alone, as Compose reads it (merge keys resolved, default ports)."""
    return _compose_config("compose.yaml")


@pytest.fixture(scope="module")
def merged_local() -> dict:
    """compose.local.yaml over compose.yaml, as Compose merges them (default ports)."""
    return _compose_config("compose.yaml", "compose.local.yaml")


def _services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def _clockfleet_commands(compose: dict) -> list[tuple[str, list[str]]]:
    """(service, argv after `clockfleet`) for every clockfleet run in compose.yaml."""
    out = []
    for name, svc in _services(compose).items():
        command = svc.get("command")
        if svc.get("image") == CLOCKFLEET_IMAGE and "entrypoint" not in svc:
            assert isinstance(command, list), f"{name}: command must be a list"
            out.append((name, [str(w) for w in command]))
        elif isinstance(command, list):  # a shell script run by another entrypoint
            for argv in clockfleet_lines("\n".join(str(w) for w in command)):
                out.append((name, argv))
    return out


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
    for name, svc in _services(compose).items():
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
        for svc in _services(compose).values()
        for vol in svc.get("volumes", [])
        if isinstance(vol, str) and not vol.startswith((".", "/"))
    }
    assert used - declared == set()


def test_compose_runs_every_part_of_the_stack(compose: dict):
    commands = {argv[0] for _, argv in _clockfleet_commands(compose)}
    assert {"publish", "collector", "agent", "keygen", "status"} <= commands
    images = {svc.get("image", "") for svc in _services(compose).values()}
    assert any(i.startswith("eclipse-mosquitto:2") for i in images)
    assert any(i.startswith("prom/prometheus") for i in images)
    assert any(i.startswith("grafana/grafana") for i in images)
    agents = [a for _, a in _clockfleet_commands(compose) if a[0] == "agent"]
    assert len(agents) >= 2


def test_every_clockfleet_command_in_compose_parses_with_the_real_subcommand(compose: dict):
    bad = [
        f"{svc}: clockfleet {' '.join(argv)}: {why}"
        for svc, argv in _clockfleet_commands(compose)
        if (why := problem(argv))
    ]
    assert bad == []


def test_flag_check_refuses_a_flag_the_subcommand_does_not_have():
    assert problem(["publish", "--config", "f.yaml", "--no-such-flag"]) is not None
    assert problem(["publsh", "--config", "f.yaml"]) is not None
    assert problem(["publish", "--config", "f.yaml", "--dry-run"]) is None


def test_each_agent_and_program_gets_its_identity_password_file(compose: dict):
    for name, argv in _clockfleet_commands(compose):
        if "--username" in argv:
            user = argv[argv.index("--username") + 1]
            secret = argv[argv.index("--password-file") + 1]
            assert secret == f"/secrets/{user}/password", name


def test_embedded_fleet_file_is_valid_for_the_publisher(compose: dict, tmp_path: Path):
    path = tmp_path / "fleet.yaml"
    path.write_text(compose["configs"]["fleet"]["content"])
    fleet = fleetfile.load(path)
    agents = [a for _, a in _clockfleet_commands(compose) if a[0] == "agent"]
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
    dockerfile = _services(compose)["ntp"]["build"]["dockerfile_inline"]
    assert '"-x"' in dockerfile


def _mount_target(svc: dict, source: str) -> str:
    for vol in svc.get("volumes", []):
        if isinstance(vol, str) and vol.split(":")[0] == source:
            return vol.split(":")[1]
    raise AssertionError(f"{source} is not mounted")


def test_grafana_finds_the_provisioned_dashboards_where_they_are_mounted(compose: dict):
    grafana = _services(compose)["grafana"]
    provider = REPO / "config/grafana/provisioning/dashboards/clockfleet.yml"
    paths = [p["options"]["path"] for p in yaml.safe_load(provider.read_text())["providers"]]
    assert _mount_target(grafana, "./config/grafana/dashboards") in paths
    assert _mount_target(grafana, "./config/grafana/provisioning") == "/etc/grafana/provisioning"


def test_grafana_datasource_and_prometheus_targets_name_compose_services(compose: dict):
    services = _services(compose)
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
    assert hosts | targets <= set(services)


def test_prometheus_loads_the_rules_file_compose_mounts_next_to_its_config(compose: dict):
    prom_svc = _services(compose)["prometheus"]
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


# --- identities: each service logs in as its own -------------------------------------------


def _argv_value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _secret_mounts(svc: dict) -> set[str]:
    """The /secrets/WHO directories a service mounts."""
    targets = {v.split(":")[1] for v in svc.get("volumes", []) if isinstance(v, str)}
    return {t for t in targets if t.startswith("/secrets/")}


@pytest.mark.parametrize("file", ["compose.yaml", "compose.local.yaml"])
def test_status_logs_in_as_operator_never_as_the_collector(file: str):
    argv = [str(w) for w in _load(REPO / file)["services"]["status"]["command"]]
    assert argv[0] == "status"
    assert _argv_value(argv, "--username") == "operator"
    assert _argv_value(argv, "--password-file") == "/secrets/operator/password"


def test_broker_acl_lets_the_operator_read_everything_status_reads():
    acl = (REPO / "broker/acl").read_text()
    block = acl.split("\nuser operator\n", 1)[1].split("\nuser ", 1)[0]
    assert "topic read clock/v1/#" in block.splitlines()


def test_each_service_mounts_only_the_secret_of_the_identity_it_logs_in_as(compose: dict):
    got, want = {}, {}
    for name, svc in _services(compose).items():
        if name == "setup":
            continue
        user = next(
            (_argv_value(a, "--username") for n, a in _clockfleet_commands(compose) if n == name),
            None,
        )
        got[name] = _secret_mounts(svc)
        want[name] = {f"/secrets/{user}"} if user else set()
    assert got == want


def test_only_the_status_service_gets_the_operators_secret(compose: dict):
    holders = {
        name
        for name, svc in _services(compose).items()
        if name != "setup" and "/secrets/operator" in _secret_mounts(svc)
    }
    assert holders == {"status"}


def test_no_two_long_running_services_share_an_identity(compose: dict):
    # Mosquitto binds client ids to user names: a second login of one identity ends the first.
    users = [
        _argv_value(argv, "--username")
        for name, argv in _clockfleet_commands(compose)
        if _services(compose)[name].get("restart") == "unless-stopped"
    ]
    assert len(users) == len(set(users)) and None not in users


# --- start order: `run --rm status` starts nothing; `up --wait` works with compose.yaml -----


def _dependencies(services: dict, name: str) -> set[str]:
    """Every service `docker compose run NAME` starts first (depends_on, transitively)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        deps = services[todo.pop()].get("depends_on") or {}
        for dep in deps if isinstance(deps, (list, dict)) else []:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_run_status_starts_no_other_service_setup_least_of_all(compose: dict):
    assert _dependencies(_services(compose), "status") == set()


def test_dependency_walk_finds_setup_behind_the_broker(compose: dict):
    assert "setup" in _dependencies(_services(compose), "collector")
    assert {"setup", "mosquitto", "publisher"} <= _dependencies(_services(compose), "agent-1")


def test_merged_status_service_depends_on_nothing_with_either_file_set(
    merged: dict, merged_local: dict
):
    assert "depends_on" not in merged["services"]["status"]
    assert "depends_on" not in merged_local["services"]["status"]


def _one_shots(services: dict) -> set[str]:
    """Services `up` starts that exit when done."""
    return {
        name
        for name, svc in services.items()
        if not svc.get("profiles") and svc.get("restart") in ("no", "on-failure")
    }


def test_up_wait_takes_each_one_shots_exit_as_done_because_a_service_waits_for_it(
    merged: dict,
):
    # `up --wait` counts a one-shot that exited as a failure unless another service waits
    # for it with service_completed_successfully (docker/compose#10596).
    services = merged["services"]
    awaited = {
        dep
        for svc in services.values()
        for dep, how in (svc.get("depends_on") or {}).items()
        if how["condition"] == "service_completed_successfully"
    }
    assert _one_shots(services) == {"setup", "publisher"}
    assert _one_shots(services) <= awaited


def test_programs_that_exit_without_a_broker_wait_for_a_healthy_one(merged: dict):
    services = merged["services"]
    for name in ("publisher", "collector", "agent-1", "agent-2"):
        assert services[name]["depends_on"]["mosquitto"]["condition"] == "service_healthy", name


def test_every_long_running_service_but_the_agents_has_a_healthcheck(merged: dict):
    services = merged["services"]
    long_running = {n for n, s in services.items() if s.get("restart") == "unless-stopped"}
    agents = {n for n, s in services.items() if (s.get("command") or [None])[0] == "agent"}
    with_check = {n for n, s in services.items() if (s.get("healthcheck") or {}).get("test")}
    assert agents == {"agent-1", "agent-2"}
    assert long_running - agents == WITH_HEALTHCHECK
    assert with_check == WITH_HEALTHCHECK


def test_healthchecks_use_only_tools_their_images_bring(compose: dict):
    # Official images: eclipse-mosquitto (Alpine: busybox sh, cat, grep, printf), debian-slim
    # + chrony (chronyd), the project image (python3), prom/prometheus (promtool),
    # grafana/grafana (Alpine: busybox wget).
    tools = {
        "mosquitto": "/bin/sh",
        "ntp": "chronyd",
        "collector": "python3",
        "prometheus": "promtool",
        "grafana": "wget",
    }
    got = {}
    for name in WITH_HEALTHCHECK:
        test = _services(compose)[name]["healthcheck"]["test"]
        got[name] = "/bin/sh" if test[0] == "CMD-SHELL" else test[1]
    assert got == tools


def test_local_override_runs_compose_yamls_healthchecks(merged: dict, merged_local: dict):
    # With the default ports the two files' checks are the same commands (compose.local.yaml
    # only puts its port variables in); Grafana is out of the local stack.
    def tests(model: dict) -> dict:
        return {
            n: s["healthcheck"]["test"]
            for n, s in model["services"].items()
            if s.get("healthcheck") and "grafana" not in (s.get("profiles") or [])
        }

    want = tests(merged)
    del want["grafana"]
    assert tests(merged_local) == want


def test_local_override_keeps_compose_yamls_start_order(merged: dict, merged_local: dict):
    deps = {n: s.get("depends_on") for n, s in merged["services"].items()}
    assert {n: s.get("depends_on") for n, s in merged_local["services"].items()} == deps


def test_local_override_moves_the_port_of_every_healthcheck():
    ports = {
        "CLOCKFLEET_MQTTS_PORT": "11883",
        "CLOCKFLEET_NTP_PORT": "11123",
        "CLOCKFLEET_COLLECTOR_PORT": "11108",
        "CLOCKFLEET_PROMETHEUS_PORT": "11090",
    }
    moved = _compose_config("compose.yaml", "compose.local.yaml", env=ports)
    for name in WITH_HEALTHCHECK - {"grafana"}:
        test = " ".join(moved["services"][name]["healthcheck"]["test"])
        assert any(p in test for p in ports.values()), f"{name}: {test}"


def _masked(argv: list[str]) -> list[str]:
    """A clockfleet command line with the values of --broker and --listen masked (the local
    file moves addresses) and without `--startup-delay 0` (which it adds for the agents)."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        if word in ("--broker", "--listen"):
            next(words)
            out += [word, "ADDRESS"]
        elif word == "--startup-delay":
            assert next(words) == "0"
        else:
            out.append(word)
    return out


def test_local_override_changes_only_addresses_in_clockfleet_commands(compose: dict, local: dict):
    services = _services(compose)
    changed = {
        name: (_masked([str(w) for w in svc["command"]]), _masked(services[name]["command"]))
        for name, svc in local["services"].items()
        if "command" in svc
        and services[name].get("image") == CLOCKFLEET_IMAGE
        and "entrypoint" not in services[name]
    }
    assert {"publisher", "collector", "status", "agent-1", "agent-2"} <= set(changed)
    assert {name for name, (mine, theirs) in changed.items() if mine != theirs} == set()


def test_masking_keeps_a_changed_identity_visible():
    base = ["status", "--broker", "mqtts://mosquitto:8883", "--username", "operator"]
    assert _masked(["status", "--broker", "mqtts://127.0.0.1:1", "--username", "collector"]) != (
        _masked(base)
    )


def test_local_override_uses_only_services_compose_yaml_defines(compose: dict, local: dict):
    assert set(local["services"]) <= set(_services(compose))


# --- images: pinned releases, clockfleet's own tagged with the project's version ------------


def _is_pinned(ref: str) -> bool:
    """An image reference naming one release: x.y.z (with an optional v and suffix), or a
    Debian point release (12.8-slim), never a major version, `latest` or no tag."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        return False
    if name.rsplit("/", 1)[-1] == "debian":
        return re.fullmatch(r"\d+\.\d+(-slim)?", tag) is not None
    return re.fullmatch(r"v?\d+\.\d+\.\d+([-.][A-Za-z0-9.-]+)?", tag) is not None


FLOATING = [
    "eclipse-mosquitto:2",
    "eclipse-mosquitto",
    "grafana/grafana:latest",
    "debian:12-slim",
    "debian:bookworm",
    "python:3.11-slim",
    "prom/prometheus:v2",
]
RELEASES = [
    "eclipse-mosquitto:2.0.20",
    "debian:12.8-slim",
    "python:3.11.10-slim-bookworm",
    "prom/prometheus:v2.53.2",
    "grafana/grafana:10.4.5",
]


def test_pin_check_refuses_floating_tags_and_accepts_releases():
    assert [ref for ref in FLOATING if _is_pinned(ref)] == []
    assert [ref for ref in RELEASES if not _is_pinned(ref)] == []


def _third_party_images(compose: dict) -> dict[str, str]:
    """Where -> image reference, for every image compose.yaml and the Dockerfile take from a
    registry (service images, FROM lines of inline Dockerfiles, the Dockerfile's default
    base)."""
    refs = {}
    for name, svc in _services(compose).items():
        image = svc.get("image", "")
        if image and not image.startswith("clockfleet"):
            refs[f"{name}: image"] = image
        build = svc.get("build")
        inline = build.get("dockerfile_inline", "") if isinstance(build, dict) else ""
        for ref in re.findall(r"^FROM (\S+)", inline, re.M):
            refs[f"{name}: FROM"] = ref
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    refs["Dockerfile: BASE_IMAGE"] = base.group(1) if base else ""
    return refs


def test_every_image_from_a_registry_is_pinned_to_a_release(compose: dict):
    refs = _third_party_images(compose)
    assert {"mosquitto: image", "prometheus: image", "grafana: image", "ntp: FROM"} <= set(refs)
    assert {where: ref for where, ref in refs.items() if not _is_pinned(ref)} == {}


def test_clockfleet_images_carry_the_project_version(compose: dict, local: dict):
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'^version = "{re.escape(__version__)}"$', pyproject, re.M)
    tags = {
        (file, svc.get("image"))
        for file, model in (("compose.yaml", compose), ("compose.local.yaml", local))
        for svc in model["services"].values()
        if str(svc.get("image", "")).startswith("clockfleet")
    }
    want_tag = {"compose.yaml": __version__, "compose.local.yaml": f"{__version__}-local"}
    assert len(tags) >= 5
    assert {(f, i) for f, i in tags if i.rpartition(":")[2] != want_tag[f]} == set()


# --- the setup script, run here for real -----------------------------------------------------

SETUP_MOUNTS = (
    "/broker-acl",
    "/identities",
    "/broker-auth",
    "/ca",
    "/certs",
    "/signing",
    "/trust",
    "/secrets",
    "/mosquitto-data",
    "/mosquitto-log",
)


def _setup_script_under(compose: dict, root: Path) -> str:
    """The setup service's script as the container runs it (Compose turns $$ into $), with
    its mount points moved under `root`."""
    script = "\n".join(str(w) for w in _services(compose)["setup"]["command"])
    script = script.replace("$$", "$")
    for mount in sorted(SETUP_MOUNTS, key=len, reverse=True):
        script = re.sub(rf"(?<![\w/.-]){re.escape(mount)}(?=[/\s]|$)", str(root) + mount, script)
    return script


class Setup:
    """The setup service's volumes under a temporary root, and its script run there."""

    def __init__(self, compose: dict, root: Path):
        self.root = root
        self.script = _setup_script_under(compose, root)
        for vol in _services(compose)["setup"]["volumes"]:
            target = vol.split(":")[1]
            if target != "/broker-acl":
                (root / target.lstrip("/")).mkdir(parents=True)
        shutil.copy(REPO / "broker/acl", root / "broker-acl")
        bindir = root / "bin"
        bindir.mkdir()
        (bindir / "clockfleet-identities").symlink_to(REPO / "broker/clockfleet-identities")
        (bindir / "clockfleet").symlink_to(Path(sys.executable).parent / "clockfleet")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOCKFLEET_")}
        self.env = {**env, "PATH": f"{bindir}:{os.environ['PATH']}"}

    def run(self, broker_names: str | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if broker_names is not None:
            env["CLOCKFLEET_BROKER_NAMES"] = broker_names
        # It needs root for its chown calls, as in the container.
        return subprocess.run(
            ["/bin/sh", "-ec", self.script], capture_output=True, text=True, env=env, timeout=60
        )

    def snapshot(self) -> dict[str, tuple[int, int, int, int, str]]:
        """Every file in the volumes: inode, mtime, owner, mode and content hash."""
        out = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.is_symlink() and "bin" not in path.parts[-2:-1]:
                st = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                out[str(path.relative_to(self.root))] = (
                    st.st_ino,
                    st.st_mtime_ns,
                    st.st_uid,
                    st.st_mode,
                    digest,
                )
        return out

    def san(self) -> set[str]:
        done = subprocess.run(
            ["openssl", "x509", "-in", str(self.root / "certs/server.crt"), "-noout", "-ext",
             "subjectAltName"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        names = done.stdout.split("\n", 1)[1]
        return {n.strip().replace("IP Address:", "IP:") for n in names.split(",")}

    def chain_verifies(self) -> bool:
        ca, server = str(self.root / "trust/ca.crt"), str(self.root / "certs/server.crt")
        done = subprocess.run(["openssl", "verify", "-CAfile", ca, server], capture_output=True)
        return done.returncode == 0


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the setup script chowns (root)")


@pytest.fixture(scope="module")
def setup_twice(compose: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple[Setup, dict]:
    """Setup run once (a new stack) and again (every later `up`): (the setup, the files as
    the first run left them)."""
    if shutil.which("openssl") is None or os.geteuid() != 0:
        pytest.skip("the setup script needs openssl and root (chown)")
    s = Setup(compose, tmp_path_factory.mktemp("setup"))
    first = s.run()
    assert first.returncode == 0, first.stderr
    before = s.snapshot()
    again = s.run()
    assert again.returncode == 0, again.stderr
    return s, before


def test_setup_run_again_rewrites_no_file_a_running_service_reads(setup_twice):
    s, before = setup_twice
    assert s.snapshot() == before


def test_setup_makes_an_identity_for_every_user_a_service_logs_in_as(compose: dict, setup_twice):
    s, _ = setup_twice
    users = {_argv_value(a, "--username") for _, a in _clockfleet_commands(compose)} - {None}
    assert users >= {"publisher", "collector", "operator", "pbx-sample-1", "pbx-sample-2"}
    assert {u for u in users if not (s.root / f"identities/{u}.password").is_file()} == set()


def test_setup_hands_each_service_its_identitys_password_readable_by_clockfleet_only(
    compose: dict, setup_twice
):
    s, _ = setup_twice
    users = {_argv_value(a, "--username") for _, a in _clockfleet_commands(compose)} - {None}
    for who in users:
        secret = s.root / "secrets" / who / "password"
        assert secret.stat().st_uid == 10001 and secret.stat().st_mode & 0o077 == 0, who
        assert secret.read_text() == (s.root / "identities" / f"{who}.password").read_text()


def test_setup_gives_the_broker_its_password_file_and_acl_only(setup_twice):
    s, _ = setup_twice
    assert sorted(p.name for p in (s.root / "broker-auth").iterdir()) == ["acl", "passwd"]
    assert (s.root / "broker-auth/passwd").stat().st_uid == 1883
    assert (s.root / "broker-auth/passwd").stat().st_mode & 0o077 == 0
    assert (s.root / "broker-auth/acl").read_text() == (REPO / "broker/acl").read_text()


def test_setup_gives_the_broker_its_certificate_key_and_ca_and_keeps_the_signing_key(
    setup_twice,
):
    s, _ = setup_twice
    # The broker's certificate, its key, and the CA that mosquitto.conf's `cafile` names.
    certs = sorted(p.name for p in (s.root / "certs").iterdir())
    assert certs == ["ca.crt", "server.crt", "server.key"]
    assert (s.root / "certs/server.key").stat().st_uid == 1883
    assert (s.root / "trust/ops-2026.pub").is_file() and (s.root / "trust/ca.crt").is_file()
    assert not (s.root / "trust/ops-2026.key").exists()
    assert s.chain_verifies()


def test_broker_certificate_names_the_service_localhost_and_loopback_by_default(setup_twice):
    s, _ = setup_twice
    assert s.san() == {"DNS:mosquitto", "DNS:localhost", "IP:127.0.0.1"}


@needs_openssl
@needs_root
def test_setup_adds_clockfleet_broker_names_to_the_broker_certificate(
    compose: dict, short_tmp: Path
):
    s = Setup(compose, short_tmp)
    done = s.run("broker.example.net, 192.0.2.7,2001:db8::7")
    assert done.returncode == 0, done.stderr
    assert s.san() == {
        "DNS:mosquitto",
        "DNS:localhost",
        "IP:127.0.0.1",
        "DNS:broker.example.net",
        "IP:192.0.2.7",
        "IP:2001:DB8:0:0:0:0:0:7",
    }
    assert s.chain_verifies()


@needs_openssl
@needs_root
def test_new_broker_names_get_a_new_certificate_from_the_same_ca_and_key(
    compose: dict, short_tmp: Path
):
    s = Setup(compose, short_tmp)
    assert s.run("broker.example.net").returncode == 0
    before = s.snapshot()
    done = s.run("broker.example.net,192.0.2.7")
    assert done.returncode == 0, done.stderr
    after = s.snapshot()
    changed = {path for path in after if after[path] != before.get(path)}
    assert changed == {"certs/server.crt", "ca/server.san"}
    assert "IP:192.0.2.7" in s.san() and s.chain_verifies()
    assert "restart mosquitto" in done.stdout


@needs_openssl
@needs_root
def test_setup_refuses_a_broker_name_that_is_neither_a_dns_name_nor_an_address(
    compose: dict, short_tmp: Path
):
    s = Setup(compose, short_tmp)
    done = s.run("broker.example.net,bad;name")
    assert done.returncode != 0
    assert "CLOCKFLEET_BROKER_NAMES: 'bad;name'" in done.stderr
    assert not (s.root / "certs/server.crt").exists()


def test_compose_hands_clockfleet_broker_names_to_setup():
    model = _compose_config("compose.yaml", env={"CLOCKFLEET_BROKER_NAMES": "b.example.net"})
    assert model["services"]["setup"]["environment"]["CLOCKFLEET_BROKER_NAMES"] == "b.example.net"


def test_clockfleet_broker_names_is_documented_for_operators():
    header = "".join(ln for ln in COMPOSE.read_text().splitlines(True) if ln.startswith("#"))
    assert "CLOCKFLEET_BROKER_NAMES" in header
    assert "CLOCKFLEET_BROKER_NAMES" in (REPO / "docs/compose.md").read_text()


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
