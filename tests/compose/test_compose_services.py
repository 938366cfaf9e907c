"""The services of compose.yaml (and compose.local.yaml over it), checked without a Docker
engine: each logs in as its own broker identity with only that identity's secret; `docker
compose run --rm status` starts no other service; `up --wait` works with compose.yaml alone
(healthchecks, one-shots awaited); images pinned, clockfleet's tagged with the project's
version; compose.local.yaml changes addresses, ports and images only. Where the compose v2
plugin is installed (it needs no engine for this), `docker compose config` merges the files
and the merged model is checked against compose.yaml's.
"""

from __future__ import annotations

import re

import pytest

from clockfleet.protocol.version import __version__
from tests.compose.composekit import (
    CLOCKFLEET_IMAGE,
    argv_value,
    clockfleet_commands,
    compose_config,
    load,
    services,
)
from tests.helpers import REPO

# Long-running services that serve something a healthcheck can ask; an agent serves nothing
# (its health is what it reports: the collector's metrics and the alert rules judge it).
WITH_HEALTHCHECK = {"mosquitto", "ntp", "collector", "prometheus", "grafana"}


# --- identities: each service logs in as its own -------------------------------------------


def _secret_mounts(svc: dict) -> set[str]:
    """The /secrets/WHO directories a service mounts."""
    targets = {v.split(":")[1] for v in svc.get("volumes", []) if isinstance(v, str)}
    return {t for t in targets if t.startswith("/secrets/")}


@pytest.mark.parametrize("file", ["compose.yaml", "compose.local.yaml"])
def test_status_logs_in_as_operator_never_as_the_collector(file: str):
    argv = [str(w) for w in load(REPO / file)["services"]["status"]["command"]]
    assert argv[0] == "status"
    assert argv_value(argv, "--username") == "operator"
    assert argv_value(argv, "--password-file") == "/secrets/operator/password"


def test_broker_acl_lets_the_operator_read_everything_status_reads():
    acl = (REPO / "broker/acl").read_text()
    block = acl.split("\nuser operator\n", 1)[1].split("\nuser ", 1)[0]
    assert "topic read clock/v1/#" in block.splitlines()


def test_each_service_mounts_only_the_secret_of_the_identity_it_logs_in_as(compose: dict):
    got, want = {}, {}
    for name, svc in services(compose).items():
        if name == "setup":
            continue
        user = next(
            (argv_value(a, "--username") for n, a in clockfleet_commands(compose) if n == name),
            None,
        )
        got[name] = _secret_mounts(svc)
        want[name] = {f"/secrets/{user}"} if user else set()
    assert got == want


def test_only_the_status_service_gets_the_operators_secret(compose: dict):
    holders = {
        name
        for name, svc in services(compose).items()
        if name != "setup" and "/secrets/operator" in _secret_mounts(svc)
    }
    assert holders == {"status"}


def test_no_two_long_running_services_share_an_identity(compose: dict):
    # Mosquitto binds client ids to user names: a second login of one identity ends the first.
    users = [
        argv_value(argv, "--username")
        for name, argv in clockfleet_commands(compose)
        if services(compose)[name].get("restart") == "unless-stopped"
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
    assert _dependencies(services(compose), "status") == set()


def test_dependency_walk_finds_setup_behind_the_broker(compose: dict):
    assert "setup" in _dependencies(services(compose), "collector")
    assert {"setup", "mosquitto", "publisher"} <= _dependencies(services(compose), "agent-1")


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
        test = services(compose)[name]["healthcheck"]["test"]
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
    moved = compose_config("compose.yaml", "compose.local.yaml", env=ports)
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
    defined = services(compose)
    changed = {
        name: (_masked([str(w) for w in svc["command"]]), _masked(defined[name]["command"]))
        for name, svc in local["services"].items()
        if "command" in svc
        and defined[name].get("image") == CLOCKFLEET_IMAGE
        and "entrypoint" not in defined[name]
    }
    assert {"publisher", "collector", "status", "agent-1", "agent-2"} <= set(changed)
    assert {name for name, (mine, theirs) in changed.items() if mine != theirs} == set()


def test_masking_keeps_a_changed_identity_visible():
    base = ["status", "--broker", "mqtts://mosquitto:8883", "--username", "operator"]
    assert _masked(["status", "--broker", "mqtts://127.0.0.1:1", "--username", "collector"]) != (
        _masked(base)
    )


def test_local_override_uses_only_services_compose_yaml_defines(compose: dict, local: dict):
    assert set(local["services"]) <= set(services(compose))


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
    for name, svc in services(compose).items():
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
