"""What the collector relies on in paho beyond its public API (collector/clockfleet/collector/
paho_socket.py lists it), checked against the installed paho and a real Mosquitto.

pyproject.toml pins paho to the versions this file has passed on. A paho release that moves
`_sock`, calls another method on it, changes how recv()'s answers are read, or stops keeping
a message's raw topic fails here, by name, before the collector loses reports in production.
"""

from __future__ import annotations

import re
import select
import socket
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import tomllib
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from clockfleet.collector import paho_socket
from clockfleet.collector.socket_reader import BufferedLink
from clockfleet.devstack.mosquitto import ShippedBroker
from clockfleet.protocol import session
from tests.collector.test_socket_reader import publish as publish_packet

# The range this file was last run against; pyproject.toml's pin must say the same.
CHECKED_ON = (">=2.1", "<2.3")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# What BufferedLink implements for paho itself (the rest it forwards to the real socket).
LINK_METHODS = {"recv", "send", "close", "pending"}


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def test_pyproject_pins_paho_to_the_range_this_contract_was_checked_on():
    pin = next(
        d
        for d in tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
        if d.startswith("paho-mqtt")
    )
    assert pin.removeprefix("paho-mqtt").split(",") == list(CHECKED_ON)


def test_the_installed_paho_is_in_the_range_this_contract_was_checked_on():
    installed = _version_tuple(version("paho-mqtt"))
    low, high = (_version_tuple(bound) for bound in CHECKED_ON)
    assert low <= installed < high, f"paho-mqtt {version('paho-mqtt')}: re-run this contract"


# --- stand-ins under a connected paho client --------------------------------------------


class Recorder:
    """A socket that records every attribute paho takes from it, delegating to the real one;
    `inject` bytes are served by recv() before the real socket's."""

    def __init__(self, real: socket.socket) -> None:
        self._real = real
        self.used: list[str] = []
        self.inject = bytearray()

    def recv(self, n: int) -> bytes:
        self.used.append("recv")
        if self.inject:
            out = bytes(self.inject[:n])
            del self.inject[:n]
            return out
        return self._real.recv(n)

    def send(self, data: bytes) -> int:
        self.used.append("send")
        return self._real.send(data)

    def close(self) -> None:
        self.used.append("close")
        self._real.close()

    def __getattr__(self, name: str) -> Any:
        self.used.append(name)
        return getattr(self._real, name)


class Stub:
    """A socket whose recv() and send() do what the test says; records close()."""

    def __init__(self, recv: Callable[[int], bytes], send: Callable[[bytes], int]) -> None:
        self._recv, self._send = recv, send
        self.closed = False

    def recv(self, n: int) -> bytes:
        return self._recv(n)

    def send(self, data: bytes) -> int:
        return self._send(data)

    def close(self) -> None:
        self.closed = True


SEED_TOPIC = "clock/v1/agents/contract-seed/report"
REPORTS = "clock/v1/agents/+/report"


def raise_(exc: BaseException) -> Callable[..., Any]:
    def f(*_: object) -> Any:
        raise exc

    return f


def new_client(broker: ShippedBroker, identity: str, **callbacks: Callable) -> mqtt.Client:
    """A paho client logged in as `identity`, as the collector's is (MQTT 3.1.1)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity, protocol=mqtt.MQTTv311)
    client.username_pw_set(identity, broker.password(identity))
    for name, fn in callbacks.items():
        setattr(client, name, fn)
    return client


def pump(client: mqtt.Client, real: socket.socket, until: Callable[[], bool]) -> None:
    """paho's external loop, as the collector drives it, until `until()` or 10 s."""
    deadline = time.monotonic() + 10
    while not until():
        assert time.monotonic() < deadline, "paho never got there"
        if client.want_write():
            assert client.loop_write() == mqtt.MQTT_ERR_SUCCESS
        select.select([real], [], [], 0.02)
        assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
        assert client.loop_misc() == mqtt.MQTT_ERR_SUCCESS


@pytest.fixture
def connected(broker: ShippedBroker):
    """A paho client logged in as `collector`, just past connect() (CONNECT sent, nothing
    read yet), and its socket."""
    acks: dict[str, Any] = {}
    client = new_client(
        broker,
        "collector",
        on_connect=lambda c, u, flags, rc, props: acks.setdefault("connack", rc),
        on_subscribe=lambda c, u, mid, rcs, props: acks.setdefault("suback", rcs),
        on_unsubscribe=lambda c, u, mid, rcs, props: acks.setdefault("unsuback", rcs),
        on_disconnect=lambda c, u, flags, rc, props: acks.setdefault("disconnect", rc),
        on_message=lambda c, u, msg: acks.setdefault("messages", []).append(msg),
    )
    client.connect(broker.host, broker.port, keepalive=1)
    real = client.socket()
    yield client, real, acks
    real.close()


# --- 1. `_sock` is the socket, and replacing it moves all of paho's I/O ------------------


def test_after_connect_the_sock_attribute_is_the_socket_paho_hands_out(connected):
    client, real, _ = connected
    assert isinstance(real, socket.socket)
    assert client._sock is real


def test_after_the_hand_off_paho_works_through_the_replacement_with_recv_send_close_only(
    connected, broker
):
    client, real, acks = connected
    recorder = paho_socket.install_link(client, Recorder)
    assert client.socket() is recorder

    pump(client, real, lambda: "connack" in acks)
    seed = new_client(broker, "contract-seed")  # an agent writing its report
    seed.connect(broker.host, broker.port)
    seed.loop_start()
    seed.publish(SEED_TOPIC, b"retained", qos=1, retain=True).wait_for_publish(10)
    seed.disconnect()
    seed.loop_stop()
    client.subscribe(REPORTS, 0)
    pump(client, real, lambda: acks.get("messages"))
    client.unsubscribe("contract/fence")
    pump(client, real, lambda: "unsuback" in acks)
    sent = recorder.used.count("send")
    time.sleep(1.2)  # past the 1 s keepalive: loop_misc() sends a PINGREQ through it
    pump(client, real, lambda: recorder.used.count("send") > sent)
    client.disconnect()
    pump(client, real, lambda: "disconnect" in acks)

    assert acks["messages"][0].payload == b"retained"
    assert set(recorder.used) == {"recv", "send", "close"}
    assert set(recorder.used) <= LINK_METHODS
    assert client.socket() is None


# --- 2. how paho reads the stand-in's answers -------------------------------------------


def test_a_blocking_io_error_from_recv_is_no_data_yet(connected):
    client, _, _ = connected
    stub = paho_socket.install_link(client, lambda real: Stub(raise_(BlockingIOError()), real.send))
    assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert client.socket() is stub and not stub.closed


def test_an_empty_recv_is_a_lost_connection_and_paho_closes_the_stand_in(connected):
    client, _, _ = connected
    stub = paho_socket.install_link(client, lambda real: Stub(lambda n: b"", real.send))
    assert client.loop_read() == mqtt.MQTT_ERR_CONN_LOST
    assert stub.closed and client.socket() is None


def test_an_oserror_from_recv_is_a_lost_connection_not_an_exception(connected):
    client, _, _ = connected
    error = ConnectionError("the broker sent a packet of 9999999 bytes")
    stub = paho_socket.install_link(client, lambda real: Stub(raise_(error), real.send))
    assert client.loop_read() == mqtt.MQTT_ERR_CONN_LOST
    assert stub.closed and client.socket() is None


def test_an_oserror_from_send_is_a_lost_connection_not_an_exception(connected):
    client, _, _ = connected
    stub = paho_socket.install_link(
        client, lambda real: Stub(real.recv, raise_(BrokenPipeError("connection closed")))
    )
    # Without a loop thread paho writes at once, else on the next loop_write(): either way
    # the error ends in a closed stand-in, never in an exception.
    client.subscribe(REPORTS, 0)
    client.loop_write()
    assert stub.closed and client.socket() is None


# --- 3. a message keeps its topic's raw bytes -------------------------------------------


def test_a_message_keeps_its_topics_raw_bytes_where_topic_would_raise(connected):
    client, real, acks = connected
    recorder = paho_socket.install_link(client, Recorder)
    pump(client, real, lambda: "connack" in acks)
    raw = b"clock/v1/agents/\xff\xfe/report"
    packet = bytearray(publish_packet("x", b"{}", retain=False))
    packet[1] += len(raw) - 1  # the same packet with the raw topic in place of "x"
    packet[2:5] = len(raw).to_bytes(2, "big") + raw
    recorder.inject += packet
    pump(client, real, lambda: acks.get("messages"))
    msg = acks["messages"][0]
    assert paho_socket.raw_topic(msg) == raw
    with pytest.raises(UnicodeDecodeError):
        _ = msg.topic


# --- callbacks and reason codes, as the collector and session.refusal read them ----------


def test_callbacks_of_api_version_2_carry_reason_code_objects(connected):
    client, real, acks = connected
    paho_socket.install_link(client, Recorder)
    pump(client, real, lambda: "connack" in acks)
    client.subscribe([(REPORTS, 0), ("clock/v1/agents/+/status", 0)])
    pump(client, real, lambda: "suback" in acks)
    client.unsubscribe("contract/fence")
    pump(client, real, lambda: "unsuback" in acks)
    assert isinstance(acks["connack"], ReasonCode) and not acks["connack"].is_failure
    assert [rc.value for rc in acks["suback"]] == [0, 0]
    assert isinstance(acks["unsuback"], list)
    assert session.refusal(acks["connack"]) is None
    assert session.refusal(acks["suback"]) is None


def test_a_refused_mqtt311_suback_arrives_as_reason_code_128(connected):
    client, real, acks = connected
    recorder = paho_socket.install_link(client, Recorder)
    pump(client, real, lambda: "connack" in acks)
    _, mid = client.subscribe("contract/denied", 0)
    recorder.inject += bytes([0x90, 3]) + mid.to_bytes(2, "big") + b"\x80"  # SUBACK: failure
    pump(client, real, lambda: "suback" in acks)
    assert [rc.value for rc in acks["suback"]] == [128]
    assert session.refusal(acks["suback"]) == "unspecified"


def test_the_buffered_link_is_a_stand_in_paho_accepts(connected):
    client, _, acks = connected
    link = paho_socket.install_link(client, BufferedLink)
    deadline = time.monotonic() + 10
    while "connack" not in acks:
        assert time.monotonic() < deadline
        link.wait(0.05)
        assert client.loop_read() == mqtt.MQTT_ERR_SUCCESS
    assert not acks["connack"].is_failure
    client.disconnect()
    assert client.socket() is None  # paho closed the link itself


def test_the_pinned_range_in_pyproject_is_the_one_named_in_its_comment():
    # The pin's comment names this file: a reader of pyproject finds what covers the range.
    text = PYPROJECT.read_text()
    line = next(line for line in text.splitlines() if '"paho-mqtt' in line)
    assert "tests/collector/test_paho_contract.py" in line
