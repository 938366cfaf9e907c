"""The agent's config file and flags: unknown keys and bad values are errors (exit 2, one
line naming the problem); flags override the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from clockfleet.agent import cli
from clockfleet.agent import config as cfgmod


def test_explicit_missing_config_file_exits_2_naming_it(tmp_path: Path, capsys):
    assert cli.main(["--id", "a1", "--config", str(tmp_path / "nope.yaml"), "--once"]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml: no such file" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_key_in_the_config_file_is_an_error(tmp_path: Path, capsys):
    (tmp_path / "agent.yaml").write_text("id: a1\npoll_intervall_s: 60\n")
    assert cli.main(["--config", str(tmp_path / "agent.yaml"), "--once"]) == 2
    assert "unknown key 'poll_intervall_s'" in capsys.readouterr().err


def test_invalid_yaml_is_an_error(tmp_path: Path, capsys):
    (tmp_path / "agent.yaml").write_text("id: [a1\n")
    assert cli.main(["--config", str(tmp_path / "agent.yaml"), "--once"]) == 2
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("id: a1\npoll_interval_s: 5\n", "poll_interval_s 5"),
        ("id: a1\nbackend: ntpdate\n", "backend 'ntpdate'"),
        ("id: a.1\n", "agent id 'a.1'"),
        ("id: a1\ntimezone: ../../etc/passwd\n", "timezone"),
        ("id: a1\nstartup_delay_s: soon\n", "startup_delay_s: Expected `float`, got `str`"),
        ("id: a1\nprobe: {timeout: 1}\n", "probe:"),
    ],
)
def test_bad_values_are_errors(tmp_path: Path, capsys, text: str, problem: str):
    (tmp_path / "agent.yaml").write_text(text)
    assert (
        cli.main(
            ["--config", str(tmp_path / "agent.yaml"), "--once", "--state-dir", str(tmp_path / "s")]
        )
        == 2
    )
    assert problem in capsys.readouterr().err


def test_missing_trust_key_is_an_error(tmp_path: Path, capsys):
    args = ["--id", "a1", "--once", "--state-dir", str(tmp_path)]
    assert cli.main([*args, "--trust-key", str(tmp_path / "none.pub")]) == 2
    assert "none.pub" in capsys.readouterr().err


def test_flags_override_the_file(tmp_path: Path):
    path = tmp_path / "agent.yaml"
    path.write_text("id: from-file\nregion: r-file\nbackend: chrony\ntrust_keys: [k.pub]\n")
    args = cli.build_parser().parse_args(
        ["--config", str(path), "--region", "r-flag", "--backend", "observe", "--no-timezone"]
    )
    cfg = cli.load_config(args)
    assert (cfg.id, cfg.region, cfg.backend, cfg.tz_root) == (
        "from-file",
        "r-flag",
        "observe",
        None,
    )
    assert cfg.trust_keys == ["k.pub"]


def test_absent_default_config_file_is_fine():
    cfg = cfgmod.from_mapping(cfgmod.load_file(Path("/nonexistent/agent.yaml"), required=False))
    args = argparse.Namespace(id="a1", region="r1")
    assert cfgmod.validate(cfgmod.apply_flags(cfg, args)).region == "r1"


def test_example_config_of_the_package_loads():
    example = Path(__file__).resolve().parents[2] / "agent" / "agent.yaml"
    cfg = cfgmod.from_mapping(cfgmod.load_file(example, required=True), str(example))
    cfg.id = cfg.id or "example"
    cfgmod.validate(cfg)
