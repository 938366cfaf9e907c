"""probe() against real chronyd servers (-x) on loopback, some under libfaketime."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from clockfleet import devstack
from clockfleet.agent.probe import ProbeResult, ProbeSettings, probe
from clockfleet.protocol.messages import OUTCOMES
from tests.agent.fakentp import FakeNtpServer

FAST = ProbeSettings(timeout_s=0.3)
Server = Callable[..., devstack.Daemon]


def addr(d: devstack.Daemon) -> tuple[str, int]:
    return (d.host, d.port)


def outcomes(result: ProbeResult) -> list[str]:
    return [a.outcome for a in result.tried]


def test_healthy_chronyd_is_ok_with_offset_near_zero_delay_and_its_stratum(
    chrony_server: Server,
) -> None:
    server = chrony_server(stratum=5)
    result = probe([addr(server)], FAST)
    assert result.ok
    assert result.chosen is result.tried[0]
    sample = result.chosen.sample
    assert sample is not None
    assert abs(sample.offset_s) < 0.005
    assert 0 < sample.delay_s < 0.1
    assert (sample.stratum, sample.leap) == (5, 0)
    assert result.chosen.requests == FAST.samples


def test_every_outcome_is_one_the_report_schema_knows(chrony_server: Server) -> None:
    server = chrony_server()
    result = probe([("no-such-host.invalid", 123), addr(server), addr(server)], FAST)
    assert outcomes(result) == ["unresolvable", "ok", "not-tried"]
    assert set(outcomes(result)) <= set(OUTCOMES)


@pytest.mark.parametrize("fake_offset_s", [-30.0, 3.0])
def test_offset_of_a_faketime_server_is_measured_within_5_ms(
    chrony_server: Server, fake_offset_s: float
) -> None:
    server = chrony_server(fake_offset_s=fake_offset_s)
    result = probe([addr(server)], FAST)
    assert result.chosen is not None and result.chosen.sample is not None
    assert result.chosen.sample.offset_s == pytest.approx(fake_offset_s, abs=0.005)


def test_chronyd_without_local_stratum_is_unsynchronised(chrony_server: Server) -> None:
    server = chrony_server(stratum=None)
    result = probe([addr(server)], FAST)
    assert not result.ok
    assert result.chosen is None
    assert outcomes(result) == ["unsynchronised"]
    assert "leap indicator 3" in (result.tried[0].detail or "")


def test_a_silent_port_times_out_after_the_timeout_and_the_next_server_is_used(
    chrony_server: Server,
) -> None:
    server = chrony_server()
    silent = devstack.silent_udp("127.0.0.1")
    try:
        started = time.monotonic()
        result = probe([silent.getsockname(), addr(server)], FAST)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert outcomes(result) == ["timeout", "ok"]
    assert result.tried[0].detail == "no answer in 0.3 s"
    assert result.chosen is result.tried[1]
    assert elapsed >= FAST.timeout_s


def test_a_closed_port_is_unreachable_and_the_next_server_is_used(chrony_server: Server) -> None:
    server = chrony_server()
    closed = devstack.free_udp_port("127.0.0.1")  # nothing bound: loopback answers ICMP
    result = probe([("127.0.0.1", closed), addr(server)], FAST)
    assert outcomes(result)[1] == "ok"
    assert outcomes(result)[0] in ("unreachable", "timeout")


def test_an_unresolvable_name_is_reported_and_skipped(chrony_server: Server) -> None:
    server = chrony_server()
    result = probe([("no-such-host.invalid", 123), addr(server)], FAST)
    assert outcomes(result) == ["unresolvable", "ok"]
    assert "no-such-host.invalid" in (result.tried[0].detail or "")


def test_list_order_is_respected_first_healthy_server_wins(chrony_server: Server) -> None:
    first, second = chrony_server(stratum=3), chrony_server(stratum=4)
    result = probe([addr(first), addr(second)], FAST)
    assert outcomes(result) == ["ok", "not-tried"]
    assert result.chosen is not None and result.chosen.sample is not None
    assert result.chosen.sample.stratum == 3
    assert result.tried[1].requests == 0
    reversed_result = probe([addr(second), addr(first)], FAST)
    assert reversed_result.chosen is not None and reversed_result.chosen.sample is not None
    assert reversed_result.chosen.sample.stratum == 4


def test_a_host_name_is_resolved_and_probed() -> None:
    with FakeNtpServer("ok", host="127.0.0.1") as fake:
        result = probe([("localhost", fake.port)], FAST)
    assert outcomes(result) == ["ok"]
    assert result.tried[0].address == "127.0.0.1"


def test_an_ipv6_literal_is_probed() -> None:
    try:
        fake = FakeNtpServer("ok", host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with fake:
        result = probe([("::1", fake.port)], FAST)
    assert outcomes(result) == ["ok"]


def test_concurrent_probes_from_several_threads_each_get_their_own_answer(
    chrony_server: Server,
) -> None:
    servers = [chrony_server(stratum=s) for s in (2, 3, 4)]
    results: dict[int, ProbeResult] = {}

    def run(i: int) -> None:
        for _ in range(20):
            results[i] = probe([addr(servers[i % 3])], FAST)
            if not results[i].ok:
                return

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6
    for i, result in results.items():
        assert result.chosen is not None and result.chosen.sample is not None, result.tried
        assert result.chosen.sample.stratum == (2, 3, 4)[i % 3]


def test_replies_carry_a_kernel_receive_timestamp_for_t4() -> None:
    from clockfleet.ntp.exchange import open_socket, receive_time_ns
    from clockfleet.ntp.packet import encode_request

    with FakeNtpServer("ok") as fake:
        sock, kernel_ts = open_socket(socket.AF_INET, fake.address)
        with sock:
            sock.settimeout(5)
            sock.send(encode_request(5))
            _data, ancdata, _flags, _addr = sock.recvmsg(1024, socket.CMSG_SPACE(16))
            after = time.time_ns()
    if not kernel_ts:
        pytest.skip("no SO_TIMESTAMPNS on this platform")
    stamp = receive_time_ns(ancdata)
    assert stamp is not None
    assert after - 1_000_000_000 < stamp <= after


def test_details_fit_the_reports_detail_field_even_for_long_names() -> None:
    long_name = ".".join(["a" * 60] * 4) + ".invalid"  # 252 characters
    result = probe([(long_name, 123)], FAST)
    assert result.tried[0].outcome == "unresolvable"
    assert len(result.tried[0].detail or "") <= 256


@pytest.mark.parametrize("port", [0, 65536 + 123, -1])
def test_a_port_outside_1_to_65535_is_not_asked(port: int) -> None:
    result = probe([("127.0.0.1", port)], FAST)
    assert result.tried[0].outcome == "unreachable"
    assert result.tried[0].detail == f"port {port} outside 1..65535"
