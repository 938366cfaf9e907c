"""The JSON Schemas for editors and CI (schemas/fleet.schema.json, schemas/agent.schema.json)
say what the programs' own validators say: every example file of the repository validates,
every broken file of the tables below is refused by the program AND by the schema, and each
schema names exactly the keys (and bounds) its program reads. The programs keep their own
validators; a schema is a help for editors, never the authority."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from clockfleet import demo_fleet
from clockfleet.agent import config as agent_config
from clockfleet.agent.clock_backends import BACKEND_NAMES
from clockfleet.ntp.checks import ProbeSettings
from clockfleet.protocol import messages
from clockfleet.publisher import fleetfile
from tests.helpers import REPO

FLEET_SCHEMA = json.loads((REPO / "schemas/fleet.schema.json").read_text())
AGENT_SCHEMA = json.loads((REPO / "schemas/agent.schema.json").read_text())


def schema_problems(schema: dict, data: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)
    ]


def fleet_problems(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "fleet.yaml"
    path.write_text(text)
    try:
        fleetfile.load(path)
    except fleetfile.FleetFileError as exc:
        return list(exc.errors)
    return []


def agent_problems(data: dict) -> list[str]:
    try:
        agent_config.validate(agent_config.from_mapping(copy.deepcopy(data)), environ={})
    except agent_config.ConfigError as exc:
        return [str(exc)]
    return []


# --- the example files ---------------------------------------------------------------------


def rendered_demo_fleet(path: Path) -> str:
    ports = {name: (host, 12300 + i) for i, (name, host) in enumerate(demo_fleet.ADDRESSES.items())}
    return demo_fleet.render(path, ports)


def cloud_init_agent_yaml() -> dict:
    """The agent.yaml packaging/cloud-init writes, its @PLACEHOLDERS@ filled in."""
    doc = yaml.safe_load((REPO / "packaging/cloud-init/clockfleet-agent.yaml").read_text())
    (entry,) = [f for f in doc["write_files"] if f["path"] == "/etc/clockfleet/agent.yaml"]
    values = {"AGENT_ID": "acme-01", "REGION": "us-east", "TIMEZONE": "America/Chicago"}
    values["BROKER"] = "mqtts://mqtt1.example.net:8883"
    return yaml.safe_load(re.sub(r"@([A-Z_]+)@", lambda m: values[m.group(1)], entry["content"]))


def packaged_agent_yaml() -> dict:
    """The unconfigured agent.yaml the Debian package installs (packaging/build_deb.py)."""
    spec = importlib.util.spec_from_file_location("build_deb", REPO / "packaging/build_deb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        return yaml.safe_load(module.unconfigured_agent_yaml())
    finally:
        del sys.modules[spec.name]


@pytest.mark.parametrize(
    "name", ["config/fleet.yaml", "config/fleet.demo.yaml", "config/fleet.demo.after.yaml"]
)
def test_every_example_fleet_file_validates(name: str, tmp_path: Path):
    text = (REPO / name).read_text()
    if "${" in text:
        text = rendered_demo_fleet(REPO / name)
    assert fleet_problems(text, tmp_path) == []  # the program's own view first
    assert schema_problems(FLEET_SCHEMA, yaml.safe_load(text)) == []


@pytest.mark.parametrize(
    "source", ["agent/agent.yaml", "packaging/cloud-init", "packaging/build_deb.py"]
)
def test_every_example_agent_yaml_validates(source: str):
    if source == "agent/agent.yaml":
        data = yaml.safe_load((REPO / source).read_text())
    elif source == "packaging/cloud-init":
        data = cloud_init_agent_yaml()
    else:
        data = packaged_agent_yaml()
    assert schema_problems(AGENT_SCHEMA, data) == []
    assert agent_problems({"id": "acme-01", **data}) == []


def test_the_example_fleet_file_names_its_schema_for_editors():
    first = (REPO / "config/fleet.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../schemas/fleet.schema.json"


# --- broken files: refused by the program and by the schema ---------------------------------

GOOD_FLEET = {
    "defaults": {"poll_interval_s": 3600, "resync_jitter_s": 30},
    "regions": {
        "us-east": {
            "timezone": "America/New_York",
            "servers": [{"host": "ntp1.us-east.example.net"}, {"host": "192.0.2.10", "port": 123}],
        }
    },
    "agents": {"acme-01": {"region": "us-east", "timezone": "America/Chicago"}},
}
US = ("regions", "us-east")


def broken(base: dict, path: tuple, value: Any) -> dict:
    """`base` with the key at `path` set to `value` (or removed, for DELETE)."""
    data = copy.deepcopy(base)
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()
SERVERS = (*US, "servers")

BROKEN_FLEETS = {
    "unknown top-level key (a typo)": ((("region",), {"us-east": {}})),
    "no regions at all": (("regions",), DELETE),
    "no region in regions": (("regions",), {}),
    "region id with a dot": (("regions", "us.east"), {"servers": [{"host": "a.example.net"}]}),
    "unknown key in a region": ((*US, "server"), [{"host": "a.example.net"}]),
    "region without servers": (SERVERS, DELETE),
    "empty server list": (SERVERS, []),
    "65 servers": (SERVERS, [{"host": f"ntp{i}.example.net"} for i in range(65)]),
    "the same server twice": (SERVERS, [{"host": "a.example.net"}, {"host": "a.example.net"}]),
    "port above 65535": ((*SERVERS, 1), {"host": "192.0.2.10", "port": 70000}),
    "port as a string": ((*SERVERS, 1), {"host": "192.0.2.10", "port": "123"}),
    "port: yes": ((*SERVERS, 1), {"host": "192.0.2.10", "port": True}),
    "host with a space": ((*SERVERS, 0), {"host": "ntp1 .example.net"}),
    "host with an IPv6 zone id": ((*SERVERS, 0), {"host": "fe80::1%eth0"}),
    "host that is no IPv4 address": ((*SERVERS, 0), {"host": "999.1.1.1"}),
    "host with a shell character": ((*SERVERS, 0), {"host": "ntp1;reboot"}),
    "server without host": ((*SERVERS, 0), {"port": 123}),
    "nts as text": ((*SERVERS, 0), {"host": "nts.example.net", "nts": "yes"}),
    "NTS-KE port without nts": ((*SERVERS, 0), {"host": "nts.example.net", "nts_ke_port": 4460}),
    "time zone as a path": ((*US, "timezone"), "../../etc/passwd"),
    "poll interval under 16 s": (("defaults", "poll_interval_s"), 5),
    "resync jitter over an hour": ((*US, "resync_jitter_s"), 4000),
    "unknown key in defaults": (("defaults", "poll_interval"), 60),
    "agent without region": (("agents", "acme-01"), {"timezone": "UTC"}),
    "agent id with a slash": (("agents", "acme/01"), {"region": "us-east"}),
    "canary over 100 %": (("rollout",), {"canary": "150%"}),
    "bake time as text": (("rollout",), {"bake_s": "ten minutes"}),
    "signing key not a path": (("signing_key",), 42),
}


@pytest.mark.parametrize("case", BROKEN_FLEETS)
def test_a_broken_fleet_file_is_refused_by_publish_and_by_the_schema(case: str, tmp_path: Path):
    path, value = BROKEN_FLEETS[case]
    data = broken(GOOD_FLEET, path, value)
    assert fleet_problems(yaml.safe_dump(data), tmp_path) != [], "publish accepts it"
    assert schema_problems(FLEET_SCHEMA, data) != [], "the schema accepts it"


GOOD_AGENT = {"id": "acme-01", "region": "us-east", "backend": "observe", "log_level": "INFO"}

BROKEN_AGENTS = {
    "unknown key (a typo)": (("brokr",), "mqtt://127.0.0.1"),
    "id with a dot": (("id",), "acme.01"),
    "unknown backend": (("backend",), "ntpd"),
    "poll interval under 16 s": (("poll_interval_s",), 5),
    "resync jitter over an hour": (("resync_jitter_s",), 4000),
    "negative start-up delay": (("startup_delay_s",), -1),
    "log level not known": (("log_level",), "verbose"),
    "time zone as a path": (("timezone",), "../etc/passwd"),
    "trust_keys a number": (("trust_keys",), 5),
    "keepalive as text": (("keepalive_s",), "30"),
    "use_timedatectl as text": (("use_timedatectl",), "yes"),
    "zone command as a shell line": (("zone_change_command",), "systemctl reload asterisk"),
    "zone command by a relative path": (("zone_change_command",), ["systemctl", "reload"]),
    "zone command timeout 0": (("zone_change_timeout_s",), 0),
}


@pytest.mark.parametrize("case", BROKEN_AGENTS)
def test_a_broken_agent_yaml_is_refused_by_the_agent_and_by_the_schema(case: str):
    path, value = BROKEN_AGENTS[case]
    data = broken(GOOD_AGENT, path, value)
    assert agent_problems(data) != [], "the agent accepts it"
    assert schema_problems(AGENT_SCHEMA, data) != [], "the schema accepts it"


def test_the_good_bases_of_the_tables_pass_both(tmp_path: Path):
    assert fleet_problems(yaml.safe_dump(GOOD_FLEET), tmp_path) == []
    assert schema_problems(FLEET_SCHEMA, GOOD_FLEET) == []
    assert agent_problems(GOOD_AGENT) == [] and schema_problems(AGENT_SCHEMA, GOOD_AGENT) == []


# --- the same keys and bounds as the programs ------------------------------------------------


def test_both_schemas_are_valid_draft_2020_12():
    for schema in (FLEET_SCHEMA, AGENT_SCHEMA):
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_fleet_schema_names_exactly_the_keys_fleetfile_reads():
    defs = FLEET_SCHEMA["$defs"]
    top = FLEET_SCHEMA["properties"]
    assert set(top) == set(fleetfile.TOP_KEYS)
    assert set(top["rollout"]["properties"]) == set(fleetfile.ROLLOUT_KEYS)
    assert set(top["defaults"]["properties"]) == set(fleetfile.TIMING_KEYS)
    assert set(defs["region"]["properties"]) == set(fleetfile.REGION_KEYS)
    assert set(defs["server"]["properties"]) == set(fleetfile.SERVER_KEYS)
    assert set(defs["agent"]["properties"]) == set(fleetfile.AGENT_KEYS)
    servers = defs["region"]["properties"]["servers"]
    assert servers["maxItems"] == messages.MAX_SERVERS
    poll = defs["poll_interval_s"]
    assert (poll["minimum"], poll["maximum"]) == (
        messages.MIN_POLL_INTERVAL_S,
        messages.MAX_POLL_INTERVAL_S,
    )
    assert defs["resync_jitter_s"]["maximum"] == messages.MAX_RESYNC_JITTER_S


def test_the_agent_schema_names_exactly_the_keys_agent_yaml_has():
    props = AGENT_SCHEMA["properties"]
    assert set(props) == set(agent_config.AgentConfig.__struct_fields__)
    assert set(props["probe"]["properties"]) == set(ProbeSettings.__dataclass_fields__)
    assert props["backend"]["enum"] == list(BACKEND_NAMES)
    assert (props["poll_interval_s"]["minimum"], props["poll_interval_s"]["maximum"]) == (
        messages.MIN_POLL_INTERVAL_S,
        messages.MAX_POLL_INTERVAL_S,
    )


def test_check_jsonschema_as_the_schemas_readme_shows_passes_the_examples_and_fails_a_typo(
    tmp_path: Path,
):
    """The CI line of schemas/README.md, run as shown."""
    readme = (REPO / "schemas/README.md").read_text()
    lines = [ln.strip() for ln in readme.splitlines() if ln.strip().startswith("check-jsonschema")]
    assert len(lines) == 2
    tool = Path(sys.executable).parent / "check-jsonschema"
    for line in lines:
        done = subprocess.run([str(tool), *line.split()[1:]], cwd=REPO, capture_output=True)
        assert done.returncode == 0, done.stdout
    typo = tmp_path / "fleet.yaml"
    typo.write_text("regions:\n  us-east:\n    server: [{host: ntp1.example.net}]\n")
    done = subprocess.run(
        [str(tool), "--schemafile", str(REPO / "schemas/fleet.schema.json"), str(typo)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "server" in done.stdout
