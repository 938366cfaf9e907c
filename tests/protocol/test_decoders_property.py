"""Property: every decoder turns any byte string into a value or a `Rejected`.

Hypothesis draws random bytes, JSON-shaped text, truncations and mutations of good payloads;
nothing but a message or a Rejected may come out (no RecursionError, no TypeError, no
UnicodeError), so no payload can end a reader's loop or make it refuse to acknowledge.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clockfleet.protocol import signing
from clockfleet.protocol.codec import MAX_PAYLOAD_BYTES, Rejected, decode
from clockfleet.protocol.messages import Command, Profile, Report, ServerList, Status
from tests.protocol.test_codec import GOOD_LIST, GOOD_REPORT, raw
from tests.protocol.test_codec_hostile import GOOD_PROFILE, GOOD_STATUS

CLASSES = [ServerList, Profile, Status, Report, Command]
GOOD = [raw(GOOD_LIST), raw(GOOD_PROFILE), raw(GOOD_STATUS), raw(GOOD_REPORT)]
FAST = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def decodes_or_rejects(cls: type, payload: bytes, topic_id: str | None = None) -> None:
    try:
        decode(cls, payload, topic_id=topic_id)
    except Rejected as r:
        assert r.reason and r.detail is not None


@FAST
@given(st.sampled_from(CLASSES), st.binary(max_size=2048))
def test_random_bytes(cls: type, payload: bytes):
    decodes_or_rejects(cls, payload)


@FAST
@given(st.sampled_from(CLASSES), json_values)
def test_any_json_value(cls: type, value: object):
    decodes_or_rejects(cls, json.dumps(value).encode())


@FAST
@given(
    st.sampled_from(CLASSES),
    st.sampled_from(GOOD),
    st.integers(min_value=0, max_value=4000),
    st.binary(max_size=64),
)
def test_good_payloads_truncated_or_spliced(cls: type, good: bytes, cut: int, junk: bytes):
    decodes_or_rejects(cls, good[:cut] + junk + good[cut:])


@FAST
@given(
    st.sampled_from(CLASSES),
    st.sampled_from(["[", '{"a":', '[{"b":[', " [ "]),
    st.integers(min_value=1, max_value=12000),
)
def test_deep_nesting_of_any_shape(cls: type, opener: str, depth: int):
    payload = (opener * depth).encode()[: MAX_PAYLOAD_BYTES - 1]
    decodes_or_rejects(cls, payload)


@FAST
@given(st.sampled_from(GOOD), st.dictionaries(st.text(max_size=10), json_values, max_size=4))
def test_good_payloads_with_any_extra_or_replaced_fields(good: bytes, extra: dict):
    obj = {**json.loads(good), **extra}
    for cls in CLASSES:
        decodes_or_rejects(cls, json.dumps(obj).encode(), topic_id="acme-01")


@FAST
@given(json_values)
def test_signature_check_of_any_object_is_a_verdict(sig: object):
    trust = signing.TrustStore()
    obj = {**GOOD_LIST, "sig": sig}
    try:
        signing.verify(obj, trust)
    except Rejected as r:
        assert r.reason in ("unsigned", "unknown-key", "bad-signature")
