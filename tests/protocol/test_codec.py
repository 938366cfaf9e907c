"""Strict decoding: every payload the contract refuses is refused with its reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from clockfleet.protocol.codec import (
    MAX_PAYLOAD_BYTES,
    Rejected,
    canonical_bytes,
    decode,
    encode,
)
from clockfleet.protocol.messages import Report, Server, ServerList, Status

GOOD_LIST = {
    "schema": "clock.servers/1",
    "region": "us-east",
    "version": 7,
    "issued_at": "2026-11-25T02:00:00Z",
    "timezone": "America/New_York",
    "poll_interval_s": 3600,
    "resync_jitter_s": 30,
    "servers": [{"host": "ntp1.us-east.example.net", "port": 123}, {"host": "192.0.2.10"}],
}

GOOD_REPORT = {
    "schema": "clock.report/1",
    "agent": "acme-01",
    "region": "us-east",
    "list_version": 7,
    "ok": True,
    "server": {"host": "192.0.2.10", "port": 123},
    "offset_s": 0.0012,
    "delay_s": 0.0004,
    "stratum": 2,
    "leap": 0,
    "discipline": "observe",
    "timezone": "America/Chicago",
    "at": "2026-11-25T02:00:01.123Z",
    "tried": [
        {"host": "ntp1.us-east.example.net", "port": 123, "outcome": "timeout", "detail": "x"},
        {"host": "192.0.2.10", "port": 123, "outcome": "ok"},
    ],
}


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def with_(base: dict, **changes: object) -> bytes:
    return raw({**base, **changes})


def reason_of(cls: type, payload: bytes, topic_id: str | None = None) -> str:
    with pytest.raises(Rejected) as exc:
        decode(cls, payload, topic_id=topic_id)
    return exc.value.reason


def test_the_design_examples_decode():
    msg, obj = decode(ServerList, raw(GOOD_LIST), topic_id="us-east")
    assert msg.version == 7
    assert msg.servers[1] == Server("192.0.2.10", 123)
    report, _ = decode(Report, raw(GOOD_REPORT), topic_id="acme-01")
    assert report.tried[0].outcome == "timeout"
    assert obj["region"] == "us-east"


def test_unknown_fields_are_ignored():
    msg, _ = decode(ServerList, with_(GOOD_LIST, future_field={"a": 1}))
    assert msg.region == "us-east"


def test_oversized_payload_is_refused():
    payload = with_(GOOD_LIST, pad="x" * MAX_PAYLOAD_BYTES)
    assert reason_of(ServerList, payload) == "oversized"


def test_non_utf8_is_refused():
    assert reason_of(ServerList, b'{"schema": "\xff"}') == "not-utf8"


def test_malformed_json_is_refused():
    assert reason_of(ServerList, b'{"schema": ') == "malformed-json"


def test_duplicate_keys_are_refused_even_when_nested():
    payload = raw(GOOD_LIST).replace(b'"port": 123}', b'"port": 123, "port": 124}', 1)
    assert reason_of(ServerList, payload) == "duplicate-key"


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_refused(constant: bytes):
    payload = raw(GOOD_REPORT).replace(b'"offset_s": 0.0012', b'"offset_s": ' + constant)
    assert reason_of(Report, payload) == "not-a-number"


def test_a_json_array_is_not_a_message():
    assert reason_of(ServerList, b"[1, 2]") == "not-an-object"


def test_wrong_schema_is_refused():
    assert reason_of(ServerList, with_(GOOD_LIST, schema="clock.servers/9")) == "wrong-schema"


@pytest.mark.parametrize(
    "field,value",
    [
        ("version", True),
        ("version", 2**70),
        ("version", -1),
        ("version", "7"),
        ("version", 7.0),
        ("servers", []),
        ("servers", [{"host": f"h{i}.example"} for i in range(65)]),
        ("servers", [{"host": "a.example", "port": 0}]),
        ("servers", [{"host": "a.example", "port": 65536}]),
        ("poll_interval_s", 1),
        ("issued_at", "2026-11-25T02:00:00"),
        ("region", "us/east"),
    ],
)
def test_ill_typed_or_out_of_bounds_list_fields_are_refused(field: str, value: object):
    assert reason_of(ServerList, with_(GOOD_LIST, **{field: value})) == "invalid-field"


@pytest.mark.parametrize("offset", [1e308, 2.0**31, -(2.0**31)])
def test_absurd_offsets_are_refused(offset: float):
    assert reason_of(Report, with_(GOOD_REPORT, offset_s=offset)) == "invalid-field"


def test_negative_delay_is_refused():
    assert reason_of(Report, with_(GOOD_REPORT, delay_s=-0.1)) == "invalid-field"


def test_boolean_is_not_an_offset():
    assert reason_of(Report, with_(GOOD_REPORT, offset_s=True)) == "invalid-field"


@pytest.mark.parametrize(
    "host", ["ntp1 .example", "a;rm -rf /", "ntp\nserver evil", "-lead.example", "300.1.1.1"]
)
def test_hosts_that_are_not_ip_or_dns_names_are_refused(host: str):
    payload = with_(GOOD_LIST, servers=[{"host": host, "port": 123}])
    assert reason_of(ServerList, payload) == "bad-host"


def test_duplicate_servers_are_refused():
    s = {"host": "192.0.2.1", "port": 123}
    assert reason_of(ServerList, with_(GOOD_LIST, servers=[s, s])) == "invalid-field"


@pytest.mark.parametrize(
    "tz", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "localtime", "America", "UTC."]
)
def test_unknown_time_zones_are_refused(tz: str):
    assert reason_of(ServerList, with_(GOOD_LIST, timezone=tz)) == "bad-timezone"


def test_payload_id_must_match_topic_id():
    assert reason_of(ServerList, raw(GOOD_LIST), topic_id="eu-west") == "id-mismatch"


def test_report_from_more_than_a_day_ahead_is_refused():
    ahead = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    assert reason_of(Report, with_(GOOD_REPORT, at=ahead)) == "future-timestamp"


def test_ok_report_must_name_its_server():
    body = {k: v for k, v in GOOD_REPORT.items() if k != "server"}
    assert reason_of(Report, raw(body)) == "invalid-field"


def test_failed_report_must_not_name_a_server():
    assert reason_of(Report, with_(GOOD_REPORT, ok=False)) == "invalid-field"


def test_unknown_outcome_is_refused():
    tried = [{"host": "192.0.2.10", "port": 123, "outcome": "great"}]
    assert reason_of(Report, with_(GOOD_REPORT, tried=tried)) == "invalid-field"


def test_status_decodes_and_round_trips():
    obj = {
        "schema": "clock.status/1",
        "agent": "acme-01",
        "state": "online",
        "software": "0.1.0",
        "region": "us-east",
        "session": 12,
        "since": "2026-11-25T02:00:00Z",
    }
    msg, _ = decode(Status, raw(obj), topic_id="acme-01")
    again, _ = decode(Status, encode(msg), topic_id="acme-01")
    assert again == msg


def test_canonical_bytes_sort_keys_drop_sig_and_keep_unicode():
    obj = {"b": 1, "a": "Zürich", "sig": {"value": "x"}}
    assert canonical_bytes(obj) == '{"a":"Zürich","b":1}'.encode()


def test_compact_duplicate_key_is_refused():
    payload = json.dumps(GOOD_LIST, separators=(",", ":")).encode()
    payload = payload.replace(b'"version":7', b'"version":7,"version":8')
    assert reason_of(ServerList, payload) == "duplicate-key"


def test_duplicate_key_hidden_behind_an_escaped_quote_in_a_value_is_refused():
    # '\":' inside a value adds one to the raw count of key endings; a repeated key
    # with a space before its colon must not balance it out.
    body = json.dumps({**GOOD_LIST, "note": 'a":b'}, separators=(",", ":")).encode()
    payload = body.replace(b'"version":7', b'"version":7,"version" :8')
    assert reason_of(ServerList, payload) == "duplicate-key"


def test_pretty_printed_json_is_accepted():
    msg, _ = decode(ServerList, json.dumps(GOOD_LIST, indent=2).encode())
    assert msg.version == 7


def test_a_value_containing_an_escaped_quote_and_colon_is_accepted():
    _, obj = decode(ServerList, json.dumps({**GOOD_LIST, "note": 'x":y'}).encode())
    assert obj["note"] == 'x":y'
