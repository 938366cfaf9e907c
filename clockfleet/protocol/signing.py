"""Ed25519 signatures over the canonical encoding, with key ids for rotation.

Key files: `NAME.key` holds the private key (PKCS#8 PEM, mode 0600), `NAME.pub` the public
key (SubjectPublicKeyInfo PEM). The key id is NAME, so rotating means adding
`ops-2027.pub` to the agents' trust before the publisher signs with `ops-2027.key`.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from clockfleet.protocol.codec import Rejected, canonical_bytes
from clockfleet.protocol.ids import is_valid_id


class KeyError_(ValueError):
    """A key file that cannot be used (missing, unreadable, wrong type, bad name)."""


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey


@dataclass
class TrustStore:
    """Public keys an agent accepts, by key id. Empty means: signatures are not required."""

    keys: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)


def key_id_from_path(path: Path) -> str:
    key_id = path.name.rsplit(".", 1)[0]
    if not is_valid_id(key_id):
        raise KeyError_(
            f"{path}: key id {key_id!r} (the file name) must match [A-Za-z0-9_-]{{1,64}}"
        )
    return key_id


def generate(out_dir: Path, key_id: str) -> tuple[Path, Path]:
    """Write KEY_ID.key (0600) and KEY_ID.pub into out_dir; refuse to overwrite."""
    if not is_valid_id(key_id):
        raise KeyError_(f"key id {key_id!r} must match [A-Za-z0-9_-]{{1,64}}")
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / f"{key_id}.key", out_dir / f"{key_id}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyError_(f"{p} exists; refusing to overwrite a key")
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
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyError_(f"{path}: cannot load private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyError_(f"{path}: not an Ed25519 private key")
    return SigningKey(key_id_from_path(path), key)


def load_public_key(path: Path) -> tuple[str, Ed25519PublicKey]:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise KeyError_(f"{path}: cannot load public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyError_(f"{path}: not an Ed25519 public key")
    return key_id_from_path(path), key


def load_trust(paths: list[Path]) -> TrustStore:
    """Public keys from files, or from every *.pub in a directory."""
    store = TrustStore()
    for path in paths:
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        for f in files:
            key_id, key = load_public_key(f)
            store.keys[key_id] = key
    return store


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
    key = trust.keys.get(sig.get("key_id"))  # type: ignore[arg-type]
    if key is None:
        raise Rejected("unknown-key", f"signed with unknown key id {sig.get('key_id')!r}")
    try:
        raw = base64.b64decode(sig.get("value", ""), validate=True)
        key.verify(raw, canonical_bytes(obj))
    except (InvalidSignature, ValueError, TypeError):
        raise Rejected(
            "bad-signature", f"signature by {sig.get('key_id')!r} does not verify"
        ) from None
    return sig["key_id"]
