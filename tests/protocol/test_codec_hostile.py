"""Hostile and far-off-clock payloads: each is a value or a `Rejected`, never anything else."""

from __future__ import annotations

import json

import pytest

from clockfleet.protocol.codec import Rejected, decode
from clockfleet.protocol.ids import host_problem
from clockfleet.protocol.messages import Command, Profile, Report, ServerList, Status
from tests.protocol.test_codec import GOOD_LIST, GOOD_REPORT, raw, reason_of, with_

GOOD_PROFILE = {
    "schema": "clock.profile/1",
    "agent": "acme-01",
    "region": "us-east",
    "timezone": "America/Chicago",
    "version": 3,
    "issued_at": "2026-11-25T02:00:00Z",
}
GOOD_STATUS = {
    "schema": "clock.status/1",
    "agent": "acme-01",
    "state": "online",
    "software": "0.1.0",
    "session": 12,
    "since": "2026-11-25T02:00:00Z",
}
ALL = [
    (ServerList, GOOD_LIST),
    (Profile, GOOD_PROFILE),
    (Status, GOOD_STATUS),
    (Report, GOOD_REPORT),
    (Command, {"schema": "clock.cmd/1", "command": "resync"}),
]
NESTED = [
    b"[" * 5000 + b"]" * 5000,
    b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a":' + b'{"b":' * 3000 + b"1" + b"}" * 3001,
    b'{ "a" : ' + b"[" * 5000 + b"]" * 5000 + b"}",  # pretty-printed: the slow path
]


@pytest.mark.parametrize("payload", NESTED, ids=["array", "in-object", "objects", "spaced"])
@pytest.mark.parametrize("cls", [c for c, _ in ALL], ids=lambda c: c.__name__)
def test_deeply_nested_json_is_refused_not_raised(cls: type, payload: bytes):
    assert reason_of(cls, payload) == "malformed-json"


def test_a_payload_that_is_not_bytes_is_refused():
    assert reason_of(ServerList, "not bytes") == "undecodable"  # type: ignore[arg-type]


@pytest.mark.parametrize("cls,body", ALL[:3], ids=["list", "profile", "status"])
def test_lists_profiles_and_status_are_never_judged_by_this_hosts_clock(cls, body):
    # A host whose RTC died sees every list as issued years "in the future".
    stamp = {"issued_at": "2031-01-01T00:00:00Z"} if "issued_at" in body else {}
    stamp = stamp or {"since": "2031-01-01T00:00:00Z"}
    msg, _ = decode(cls, raw({**body, **stamp}))
    assert msg.schema == body["schema"]


def test_an_agent_reading_its_own_report_back_may_skip_the_future_rule():
    payload = with_(GOOD_REPORT, at="2031-01-01T00:00:00Z")
    assert reason_of(Report, payload) == "future-timestamp"
    report, _ = decode(Report, payload, check_future=False)
    assert report.at.year == 2031


SMUGGLED_HOSTS = [
    "fe80::1%eth0",
    "fe80::1%eth0\nserver evil.example iburst",
    "fe80::1%25eth0",
    "::1%lo",
    "192.0.2.1\n",
    "192.0.2.1 ",
    "ntp.example\x00",
    'a"b.example',
    "a}b.example",
    "ntp.example\u2028evil",
    "ｎｔｐ.example",  # fullwidth letters: not ASCII
]


@pytest.mark.parametrize("host", SMUGGLED_HOSTS)
def test_hosts_with_zone_ids_or_control_characters_are_refused_everywhere(host: str):
    assert host_problem(host) is not None
    assert reason_of(ServerList, with_(GOOD_LIST, servers=[{"host": host}])) == "bad-host"
    server = {"host": host, "port": 123}
    assert reason_of(Report, with_(GOOD_REPORT, server=server)) == "bad-host"
    tried = [{"host": host, "port": 123, "outcome": "timeout"}]
    assert reason_of(Report, with_(GOOD_REPORT, tried=tried)) == "bad-host"


@pytest.mark.parametrize("host", ["2001:db8::1", "::1", "192.0.2.10", "ntp1.example.net", "a-b"])
def test_plain_ip_literals_and_dns_names_pass(host: str):
    assert host_problem(host) is None


def test_a_rejection_is_a_value_error_with_reason_and_detail():
    with pytest.raises(Rejected) as exc:
        decode(ServerList, json.dumps([1]).encode())
    assert (exc.value.reason, isinstance(exc.value, ValueError)) == ("not-an-object", True)
