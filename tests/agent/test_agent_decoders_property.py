"""Property: every reader on the agent's side turns any input into a value or its own clean
refusal: NTP replies (any datagram), the state directory's files (any bytes, a crash or a
full disk may leave them so), agent.yaml (any text)."""

from __future__ import annotations

import json
import struct
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clockfleet.agent import config
from clockfleet.agent.state import Remembered, StateDir
from clockfleet.ntp.checks import Failure, ProbeSettings, Sample, check_reply, gate
from clockfleet.ntp.packet import PacketError, decode
from clockfleet.protocol.messages import Report, Server

FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
NS = 1_000_000_000
T1 = 1_800_000_000 * NS
NONCE = 0x1122334455667788
REPORT = Report(
    schema="clock.report/1",
    agent="a1",
    region="r1",
    list_version=1,
    ok=True,
    discipline="observe",
    at=datetime.now(UTC),
    tried=[],
    server=Server("127.0.0.1", 123),
    offset_s=0.0,
    delay_s=0.0,
)


@FAST
@given(st.binary(max_size=200))
def test_any_datagram_decodes_or_is_a_packet_error(data: bytes):
    try:
        packet = decode(data)
    except PacketError as e:
        assert len(data) < 48 or len(data) % 4, e
        return
    assert 0 <= packet.leap <= 3 and 0 <= packet.version <= 7 and 0 <= packet.mode <= 7


@FAST
@given(st.binary(min_size=48, max_size=48), st.integers(min_value=-(10**10), max_value=10**10))
def test_any_reply_carrying_our_nonce_gets_a_verdict(body: bytes, t4_shift: int):
    # Our nonce in the origin field so that the checks past the gate run on random fields.
    data = body[:24] + struct.pack("!Q", NONCE) + body[32:]
    data = bytes([(data[0] & 0b11000111) | (4 << 3)]) + data[1:]  # version 4
    packet = gate(data, NONCE)
    if isinstance(packet, Failure):
        return
    verdict = check_reply(packet, T1, T1 + t4_shift, ProbeSettings())
    assert isinstance(verdict, Sample | Failure)
    if isinstance(verdict, Sample):
        assert verdict.delay_s >= 0


@FAST
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_state_files_load_as_state_or_nothing(raw: bytes):
    with tempfile.TemporaryDirectory() as d:
        state = StateDir(Path(d))
        for name in ("state.json", "last_good.json"):
            (Path(d) / name).write_bytes(raw)
        assert isinstance(state.load_remembered(), Remembered)
        age = state.last_good_age(REPORT, 0.0, 0.5)
        assert age is None or age >= 0


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@FAST
@given(st.dictionaries(st.sampled_from([*config.AgentConfig.__struct_fields__, "x"]), json_like))
def test_any_state_json_shape_loads(obj: dict):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "state.json").write_text(json.dumps(obj))
        assert isinstance(StateDir(Path(d)).load_remembered(), Remembered)


@FAST
@given(st.text(max_size=400))
def test_any_agent_yaml_is_a_config_or_a_config_error(text: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "agent.yaml"
        path.write_text(text)
        try:
            config.validate(config.from_mapping(config.load_file(path, required=True)))
        except config.ConfigError as e:
            assert str(e)


@FAST
@given(st.dictionaries(st.sampled_from([*config.AgentConfig.__struct_fields__, "x"]), json_like))
def test_any_agent_yaml_mapping_is_a_config_or_a_config_error(data: dict):
    try:
        config.validate(config.from_mapping(data))
    except config.ConfigError as e:
        assert str(e)
