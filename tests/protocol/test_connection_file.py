"""The operator's connection settings: flags over the environment over the connection file,
read by every command's parser but the agent's; a password only ever from a file."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest

from clockfleet.cli import COMMANDS
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol import connection as conn
from clockfleet.protocol.connection_file import ENV_CONNECTION, ENV_OF
from tests.publisher.kit import FLEET

# Every command but the agent (agent.yaml) and keygen (no broker); their first arguments.
OPERATOR_COMMANDS = {"publish": [], "rollout": ["status"], "status": [], "collector": []}
OPERATOR_COMMANDS["retire"] = ["acme-01", "--no-revoke"]


def parse(argv: list[str], *, connection_file: bool = True) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    conn.add_arguments(p, connection_file=connection_file)
    return p.parse_args(argv)


def settings(argv: list[str], env: dict[str, str], **kw: object) -> conn.ConnectionSettings:
    return conn.settings_from_args(parse(argv), environ=env, **kw)  # type: ignore[arg-type]


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose home holds no connection file yet (and no other CLOCKFLEET_*)."""
    return {"HOME": str(tmp_path / "home")}


def test_the_users_connection_file_gives_every_setting_paths_relative_to_it(tmp_path, home):
    folder = tmp_path / "home/.config/clockfleet"
    write(folder / "pw", "s3cret\n")
    write(folder / "ca.crt", "not read here")
    write(
        folder / "operator.yaml",
        "broker: [mqtts://a.example.net:8883, mqtts://b.example.net]\n"
        "username: publisher\npassword_file: pw\nca_file: ca.crt\nprefix: lab/v1\n",
    )
    s = settings([], home)
    assert [str(b) for b in s.brokers] == [
        "mqtts://a.example.net:8883",
        "mqtts://b.example.net:8883",
    ]
    assert (s.username, s.password, s.prefix) == ("publisher", "s3cret", "lab/v1")
    assert s.ca_file == str(folder / "ca.crt")


def test_a_flag_beats_the_environment_which_beats_the_file(tmp_path, home):
    file = write(tmp_path / "c.yaml", "broker: mqtt://file.example.net\nusername: from-file\n")
    env = {**home, ENV_CONNECTION: str(file), ENV_OF["broker"]: "mqtt://env.example.net"}
    s = settings([], env)
    assert (str(s.brokers[0]), s.username) == ("mqtt://env.example.net:1883", "from-file")
    s = settings(["--broker", "mqtt://flag.example.net", "--username", "u"], env)
    assert (str(s.brokers[0]), s.username) == ("mqtt://flag.example.net:1883", "u")


def test_connection_flag_beats_the_environments_file(tmp_path, home):
    a = write(tmp_path / "a.yaml", "username: a\n")
    b = write(tmp_path / "b.yaml", "username: b\n")
    assert settings(["--connection", str(b)], {**home, ENV_CONNECTION: str(a)}).username == "b"


def test_the_agents_parser_reads_no_connection_file_and_keeps_agent_yaml_over_the_env(tmp_path):
    file = write(tmp_path / "c.yaml", "username: publisher\n")
    env = {ENV_CONNECTION: str(file), ENV_OF["broker"]: "mqtt://env.example.net"}
    args = parse([], connection_file=False)
    s = conn.settings_from_args(args, {"broker": "mqtt://agent-yaml.example.net"}, environ=env)
    assert (str(s.brokers[0]), s.username) == ("mqtt://agent-yaml.example.net:1883", None)
    assert str(conn.settings_from_args(args, {}, environ=env).brokers[0]).startswith("mqtt://env.")


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        ("password: hunter2\n", 0o600, "`password` is not read"),
        ("pasword_file: pw\n", 0o600, "unknown key 'pasword_file'"),
        ("username: [a, b]\n", 0o600, "username: must be a non-empty string"),
        ("- broker\n", 0o600, "must be a mapping"),
        ("broker: {\n", 0o600, "not valid YAML"),
        ("username: u\n", 0o664, "writable by group or others"),
        ("broker: http://x\n", 0o600, "broker: broker 'http://x': scheme must be"),
        ("ca_file: missing.crt\n", 0o600, "c.yaml: ca_file"),
    ],
)
def test_a_bad_connection_file_is_one_usage_error_naming_it(tmp_path, home, text, mode, expected):
    file = write(tmp_path / "c.yaml", text, mode)
    with pytest.raises(conn.UsageError, match=r"c\.yaml") as err:
        settings(["--connection", str(file)], home)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_an_empty_clockfleet_connection_reads_no_file_at_all(tmp_path, home):
    write(tmp_path / "home/.config/clockfleet/operator.yaml", "username: publisher\n")
    assert settings([], home).username == "publisher"
    assert settings([], {**home, ENV_CONNECTION: ""}).username is None


def test_a_named_connection_file_that_is_missing_is_an_error(tmp_path, home):
    with pytest.raises(conn.UsageError, match=f"{ENV_CONNECTION} .*: no such file"):
        settings([], {**home, ENV_CONNECTION: str(tmp_path / "nope.yaml")})


def test_a_password_file_named_by_the_environment_says_so_when_missing(home):
    with pytest.raises(conn.UsageError, match=r"^CLOCKFLEET_PASSWORD_FILE /nonexistent/pw: "):
        settings([], {**home, ENV_OF["password_file"]: "/nonexistent/pw"})


def test_every_command_but_the_agent_and_keygen_is_held_to_the_connection_file():
    assert set(COMMANDS) - {"agent", "keygen"} == set(OPERATOR_COMMANDS)


@pytest.mark.parametrize("command", OPERATOR_COMMANDS)
def test_every_operator_command_exits_2_with_one_line_on_a_bad_connection_file(
    command, tmp_path, monkeypatch, capsys
):
    file = write(tmp_path / "c.yaml", "usrname: x\n")
    monkeypatch.setenv(ENV_CONNECTION, str(file))
    write(tmp_path / "config/fleet.yaml", FLEET)  # publish checks its file first
    module, func, _ = COMMANDS[command]
    main = getattr(importlib.import_module(module), func)
    monkeypatch.chdir(tmp_path)
    code = main(OPERATOR_COMMANDS[command])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "unknown key 'usrname'" in err[0], err


def test_status_connects_with_only_a_connection_file(broker: ShippedBroker, tmp_path, monkeypatch):
    """The shipped broker's TLS listener, its CA and the operator's identity, all from the
    file: the command line names nothing but what to show."""
    write(
        tmp_path / "cfg/clockfleet/operator.yaml",
        f"broker: {broker.tls_url}\nusername: operator\n"
        f"password_file: {broker.password_file('operator')}\nca_file: {broker.ca_file}\n",
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    for name in (ENV_CONNECTION, *ENV_OF.values()):
        monkeypatch.delenv(name, raising=False)
    from clockfleet.collector.status import main

    assert main(["--json", "--wait", "5", "--settle", "0"]) == 0
