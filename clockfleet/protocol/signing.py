"""Ed25519 signatures over the canonical encoding, with key ids for rotation.

Key files: `NAME.key` holds the private key (PKCS#8 PEM, mode 0600), `NAME.pub` the public
key (SubjectPublicKeyInfo PEM), the formats `openssl genpkey -algorithm ed25519` writes. The
key id is NAME, so rotating means adding `ops-2027.pub` to the agents' trust before the
publisher signs with `ops-2027.key`.

Two libraries, one per side, for footprint: verifying (every agent, on every PBX) uses
PyNaCl (libsodium, ~2 MB resident); making keys and signing (the publisher only) uses
`cryptography` (~9.5 MB resident), imported only by the functions that need it.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from clockfleet.protocol import codec
from clockfleet.protocol.codec import Rejected, canonical_bytes
from clockfleet.protocol.ids import ID_PATTERN, is_valid_id
from clockfleet.protocol.messages import Profile, ServerList

M = TypeVar("M", ServerList, Profile)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# RFC 8410 §4: an Ed25519 SubjectPublicKeyInfo is always these 12 DER bytes (SEQUENCE,
# AlgorithmIdentifier 1.3.101.112, BIT STRING header) followed by the 32-byte key.
_ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM_PUBLIC = ("-----BEGIN PUBLIC KEY-----", "-----END PUBLIC KEY-----")


class KeyFileError(ValueError):
    """A key file that cannot be used (missing, unreadable, wrong type, bad name)."""


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey

    def verify_key(self) -> VerifyKey:
        from cryptography.hazmat.primitives import serialization

        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return VerifyKey(raw)


@dataclass
class TrustStore:
    """Public keys an agent accepts, by key id. Empty means: signatures are not required."""

    keys: dict[str, VerifyKey] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)


def key_id_from_path(path: Path) -> str:
    key_id = path.name.rsplit(".", 1)[0]
    if not is_valid_id(key_id):
        raise KeyFileError(f"{path}: key id {key_id!r} (the file name) must match {ID_PATTERN}")
    return key_id


def generate(out_dir: Path, key_id: str) -> tuple[Path, Path]:
    """Write KEY_ID.key (0600) and KEY_ID.pub into out_dir; refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not is_valid_id(key_id):
        raise KeyFileError(f"key id {key_id!r} must match {ID_PATTERN}")
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / f"{key_id}.key", out_dir / f"{key_id}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p} exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return priv_path, pub_path


def load_signing_key(path: Path) -> SigningKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: cannot load private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return SigningKey(key_id_from_path(path), key)


def load_public_key(path: Path) -> tuple[str, VerifyKey]:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot load public key: {exc}") from None
    raw = _ed25519_from_pem(text)
    if raw is None:
        raise KeyFileError(f"{path}: not an Ed25519 public key (PEM SubjectPublicKeyInfo)")
    return key_id_from_path(path), VerifyKey(raw)


def _ed25519_from_pem(text: str) -> bytes | None:
    begin, end = _PEM_PUBLIC
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != begin or lines[-1] != end:
        return None
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != 44 or not der.startswith(_ED25519_SPKI_PREFIX):
        return None
    return der[12:]


def load_trust(paths: list[Path]) -> TrustStore:
    """Public keys from files, or from every *.pub in a directory."""
    store = TrustStore()
    for path in paths:
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        for f in files:
            key_id, key = load_public_key(f)
            store.keys[key_id] = key
    return store


def trust_of(key: SigningKey) -> TrustStore:
    """A trust store holding the public half of `key` (the publisher checks its own lists)."""
    return TrustStore({key.key_id: key.verify_key()})


def sign(obj: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """A copy of obj with `sig` over its canonical encoding."""
    value = key.private.sign(canonical_bytes(obj))
    signed = {k: v for k, v in obj.items() if k != "sig"}
    signed["sig"] = {
        "alg": "ed25519",
        "key_id": key.key_id,
        "value": base64.b64encode(value).decode("ascii"),
    }
    return signed


def verify(obj: dict[str, Any], trust: TrustStore) -> str:
    """Check obj's signature against the trust store; return the key id or raise Rejected."""
    sig = obj.get("sig")
    if not isinstance(sig, dict):
        raise Rejected("unsigned", "no signature, and a trust key is configured")
    key_id = sig.get("key_id")
    if not isinstance(key_id, str):
        raise Rejected("unknown-key", f"signed with unknown key id {key_id!r}")
    key = trust.keys.get(key_id)
    if key is None:
        raise Rejected("unknown-key", f"signed with unknown key id {key_id!r}")
    try:
        raw = base64.b64decode(sig.get("value", ""), validate=True)
        key.verify(canonical_bytes(obj), raw)
    except (BadSignatureError, ValueError, TypeError):
        raise Rejected("bad-signature", f"signature by {key_id!r} does not verify") from None
    return key_id


def decode_signed(
    cls: type[M], payload: bytes, topic_id: str | None, trust: TrustStore
) -> tuple[M, dict[str, Any]]:
    """A list or profile as every reader accepts one: strictly decoded (`codec.decode`),
    then, when trust keys are configured, signed by one of them. Raises codec.Rejected with
    the reason otherwise. The agent (live and from its cache) and the publisher's rollout
    watch all accept signed messages through this one function."""
    msg, obj = codec.decode(cls, payload, topic_id=topic_id)
    if trust:
        verify(obj, trust)
    return msg, obj
