"""NTS in the wire contract: `nts` and `nts_ke_port` on a list entry, only in clock.servers/2,
which an agent that predates NTS refuses whole rather than ask an NTS server in plain NTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clockfleet.protocol import rollout
from clockfleet.protocol.codec import Rejected, decode, encode
from clockfleet.protocol.messages import Server, ServerList, Tried
from tests.helpers import REPO

# The last commit before NTS entries: the decoder every agent released so far runs.
BEFORE_NTS = "aa6fd17"

NTS_LIST = {
    "schema": "clock.servers/2",
    "region": "eu-west",
    "version": 9,
    "issued_at": "2026-12-07T02:00:00Z",
    "servers": [
        {"host": "time.cloudflare.com", "port": 123, "nts": True},
        {"host": "nts.netnod.se", "port": 123, "nts": True, "nts_ke_port": 4460},
        {"host": "192.0.2.10", "port": 123},
    ],
}


def payload(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode()


def with_servers(schema: str, *servers: dict[str, object]) -> bytes:
    return payload({**NTS_LIST, "schema": schema, "servers": list(servers)})


def reason(data: bytes) -> str:
    with pytest.raises(Rejected) as refused:
        decode(ServerList, data)
    return refused.value.reason


def test_nts_entries_decode_from_a_servers_2_list() -> None:
    sl, _ = decode(ServerList, payload(NTS_LIST))
    assert sl.servers == [
        Server("time.cloudflare.com", 123, nts=True),
        Server("nts.netnod.se", 123, nts=True, nts_ke_port=4460),
        Server("192.0.2.10", 123),
    ]


def test_nts_entry_in_a_servers_1_list_is_refused() -> None:
    data = with_servers("clock.servers/1", {"host": "time.cloudflare.com", "nts": True})
    assert reason(data) == "invalid-field"


def test_nts_ke_port_without_nts_is_refused() -> None:
    data = with_servers("clock.servers/2", {"host": "time.example.net", "nts_ke_port": 4460})
    assert reason(data) == "invalid-field"


def test_unknown_field_of_a_servers_2_entry_refuses_the_list() -> None:
    data = with_servers("clock.servers/2", {"host": "a.example.net", "nts": True, "nts_v2": 1})
    assert reason(data) == "invalid-field"


def test_plain_entry_and_tried_entry_encode_as_before() -> None:
    assert encode(Server("h", 124)) == b'{"host":"h","port":124}'
    assert b"auth" not in encode(Tried(host="h", port=123, outcome="ok"))


def test_turning_nts_on_changes_the_list_digest_and_plain_lists_keep_theirs() -> None:
    plain = [Server("a.example.net", 123)]
    assert rollout.list_digest(plain) == rollout.list_digest([("a.example.net", 123)])
    assert rollout.list_digest([Server("a.example.net", 123, nts=True)]) != rollout.list_digest(
        plain
    )


@pytest.fixture(scope="module")
def old_decoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """clockfleet.protocol as of BEFORE_NTS, in a folder of its own."""
    root = tmp_path_factory.mktemp("old")
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", BEFORE_NTS, "clockfleet/protocol/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{BEFORE_NTS}:{name}"],
            capture_output=True,
            check=True,
        ).stdout
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(text)
    return root


def old_decode(root: Path, data: bytes) -> dict[str, object]:
    code = (
        "import json, sys\n"
        "import clockfleet.protocol.codec as c\n"
        "from clockfleet.protocol.messages import ServerList\n"
        f"assert c.__file__.startswith({str(root)!r}), c.__file__\n"
        "try:\n"
        "    sl, _ = c.decode(ServerList, sys.stdin.buffer.read())\n"
        "    print(json.dumps({'servers': [[s.host, s.port] for s in sl.servers]}))\n"
        "except c.Rejected as r:\n"
        "    print(json.dumps({'rejected': r.reason}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=data,
        capture_output=True,
        env=env,
        check=True,
        cwd=root,  # `-c` puts the working directory first on the path: not this checkout
    )
    return dict(json.loads(out.stdout))


def test_agent_before_nts_refuses_a_servers_2_list(old_decoder: Path) -> None:
    assert old_decode(old_decoder, payload(NTS_LIST)) == {"rejected": "wrong-schema"}


def test_agent_before_nts_would_ask_an_nts_entry_of_a_servers_1_list_in_plain_ntp(
    old_decoder: Path,
) -> None:
    """Why NTS entries need the new schema: the old decoder ignores a field it does not
    know, so `nts: true` alone would be dropped and the server asked unauthenticated."""
    data = with_servers("clock.servers/1", {"host": "time.cloudflare.com", "nts": True})
    assert old_decode(old_decoder, data) == {"servers": [["time.cloudflare.com", 123]]}
