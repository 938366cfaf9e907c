"""Signatures with key ids, and topics built and parsed as the contract names them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clockfleet.protocol import signing
from clockfleet.protocol.codec import Rejected
from clockfleet.protocol.connection import UsageError, parse_brokers
from clockfleet.protocol.topics import TopicError, parse_topic, servers_topic

BODY = {"schema": "clock.servers/1", "region": "r1", "version": 3, "servers": []}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[signing.SigningKey, signing.TrustStore]:
    priv, pub = signing.generate(tmp_path / "keys", "ops-2026")
    return signing.load_signing_key(priv), signing.load_trust([pub])


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path):
    priv, pub = signing.generate(tmp_path, "ops-2026")
    assert priv.stat().st_mode & 0o777 == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_keygen_refuses_to_overwrite_a_key(tmp_path: Path):
    signing.generate(tmp_path, "k1")
    with pytest.raises(signing.KeyFileError):
        signing.generate(tmp_path, "k1")


def test_signed_object_verifies_with_its_key_id(keys):
    key, trust = keys
    signed = signing.sign(BODY, key)
    assert signed["sig"]["key_id"] == "ops-2026"
    assert signing.verify(signed, trust) == "ops-2026"


def test_any_changed_field_breaks_the_signature(keys):
    key, trust = keys
    signed = signing.sign(BODY, key)
    signed["version"] = 4
    with pytest.raises(Rejected) as exc:
        signing.verify(signed, trust)
    assert exc.value.reason == "bad-signature"


def test_unsigned_object_is_refused_when_a_key_is_trusted(keys):
    with pytest.raises(Rejected) as exc:
        signing.verify(BODY, keys[1])
    assert exc.value.reason == "unsigned"


def test_signature_by_an_untrusted_key_is_refused(keys, tmp_path: Path):
    other = signing.load_signing_key(signing.generate(tmp_path / "o", "rogue")[0])
    with pytest.raises(Rejected) as exc:
        signing.verify(signing.sign(BODY, other), keys[1])
    assert exc.value.reason == "unknown-key"


def test_trust_directory_loads_every_public_key(tmp_path: Path):
    signing.generate(tmp_path, "a")
    signing.generate(tmp_path, "b")
    assert sorted(signing.load_trust([tmp_path]).keys) == ["a", "b"]


def test_topics_round_trip():
    ref = parse_topic("clock/v1", servers_topic("clock/v1", "us-east"))
    assert (ref.kind, ref.ident) == ("servers", "us-east")
    assert parse_topic("clock/v1", "clock/v1/agents/acme-01/report").kind == "report"


@pytest.mark.parametrize(
    "topic",
    [
        "clock/v1/agents/a.b/report",
        "clock/v1/agents/+/report",
        "clock/v1/agents/a/b/report",
        "clock/v1/agents/a/unknown",
        "other/v1/agents/a/report",
    ],
)
def test_off_contract_topics_are_refused(topic: str):
    with pytest.raises(TopicError):
        parse_topic("clock/v1", topic)


def test_broker_lists_name_a_cluster():
    addrs = parse_brokers("mqtt://127.0.0.1:1884,mqtts://[::1]")
    assert [(a.tls, a.host, a.port) for a in addrs] == [
        (False, "127.0.0.1", 1884),
        (True, "::1", 8883),
    ]


def test_a_broker_url_with_another_scheme_is_a_usage_error():
    with pytest.raises(UsageError):
        parse_brokers("http://127.0.0.1:1883")


def test_a_key_pair_made_by_openssl_signs_and_verifies(tmp_path: Path):
    priv, pub = tmp_path / "ossl.key", tmp_path / "ossl.pub"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", priv], check=True)
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True)
    signed = signing.sign(BODY, signing.load_signing_key(priv))
    assert signing.verify(signed, signing.load_trust([pub])) == "ossl"


def test_a_public_key_of_another_type_is_refused(tmp_path: Path):
    priv, pub = tmp_path / "rsa.key", tmp_path / "rsa.pub"
    subprocess.run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "rsa",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out",
            priv,
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-out", pub], check=True)
    with pytest.raises(signing.KeyFileError, match="not an Ed25519 public key"):
        signing.load_trust([pub])


@pytest.mark.parametrize(
    "text", ["", "garbage", "-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----\n"]
)
def test_a_mangled_public_key_file_is_refused(tmp_path: Path, text: str):
    (tmp_path / "bad.pub").write_text(text)
    with pytest.raises(signing.KeyFileError):
        signing.load_trust([tmp_path / "bad.pub"])


def test_verifying_never_loads_the_signing_library(tmp_path: Path):
    # The agent verifies on every host: it must not pay cryptography's ~9.5 MB.
    priv, pub = signing.generate(tmp_path, "ops-2026")
    signed = tmp_path / "signed.json"
    signed.write_text(json.dumps(signing.sign(BODY, signing.load_signing_key(priv))))
    code = (
        "import json, sys; from pathlib import Path; "
        "from clockfleet.protocol import signing; "
        f"t = signing.load_trust([Path({str(pub)!r})]); "
        f"print(signing.verify(json.loads(Path({str(signed)!r}).read_text()), t)); "
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ops-2026", "False"]
