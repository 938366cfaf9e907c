"""`clockfleet keygen`, and the commands' handling of bad arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from clockfleet.protocol import signing
from clockfleet.publisher.cli import publish_main
from clockfleet.publisher.keygen import keygen_main
from tests.publisher.kit import FLEET


def test_keygen_writes_a_key_pair_and_says_where_each_goes(tmp_path: Path, capsys):
    assert keygen_main(["--out", str(tmp_path), "--key-id", "ops-2031"]) == 0
    out = capsys.readouterr().out
    private, public = tmp_path / "ops-2031.key", tmp_path / "ops-2031.pub"
    assert private.stat().st_mode & 0o777 == 0o600
    key = signing.load_signing_key(private)
    trust = signing.load_trust([public])
    assert signing.verify(signing.sign({"a": 1}, key), trust) == "ops-2031"
    assert f"private key: {private}" in out and "stays with the publisher" in out
    assert f"public key:  {public}" in out and "--trust-key" in out


def test_keygen_names_the_key_for_the_year_by_default(tmp_path: Path, capsys):
    assert keygen_main(["--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0].startswith("ops-20") and names[0].endswith(".key")


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path, capsys):
    assert keygen_main(["--out", str(tmp_path), "--key-id", "k"]) == 0
    assert keygen_main(["--out", str(tmp_path), "--key-id", "k"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_keygen_refuses_a_key_id_with_a_dot(tmp_path: Path, capsys):
    assert keygen_main(["--out", str(tmp_path), "--key-id", "ops.2026"]) == 2
    assert "must match" in capsys.readouterr().err


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--timeout", "soon"], "invalid float value"),
        (["--timeout", "0"], "--timeout 0.0: must be positive"),
        (["--broker", "http://127.0.0.1:1"], "scheme must be mqtt:// or mqtts://"),
        (["--broker", "mqtt://127.0.0.1:99999"], "bad port"),
        (["--password-file", "/nonexistent/pw"], "--password-file /nonexistent/pw"),
        (["--ca-file", "/nonexistent/ca.crt"], "--ca-file /nonexistent/ca.crt: no such file"),
        (["--signing-key", "/nonexistent/k.key"], "cannot load private key"),
    ],
)
def test_a_bad_argument_exits_2_with_one_line(args, expected, tmp_path: Path, capsys):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    assert publish_main(["--config", str(config), *args]) == 2
    assert expected in one_error_line(capsys)


def test_a_corrupt_state_file_exits_2_with_one_line(tmp_path: Path, capsys):
    config = tmp_path / "fleet.yaml"
    config.write_text(FLEET)
    (tmp_path / ".publisher-state.json").write_text("{broken")
    assert publish_main(["--config", str(config)]) == 2
    assert "state file" in one_error_line(capsys)


def test_help_explains_versions_and_exit_codes(capsys):
    assert publish_main(["--help"]) == 0
    out = capsys.readouterr().out
    for words in ("--dry-run", "--prune", "--signing-key", "exit codes", "YYYYMMDD00", "--broker"):
        assert words in out
