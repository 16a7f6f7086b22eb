"""Signed certificates: Ed25519 over canonical JSON, checkable with nothing but the file and a public key.

A certificate body is any JSON object; `sign_certificate` adds a `signature` block holding the
sha256 of each top-level field's canonical JSON and an Ed25519 signature over those digests. So
the signature covers the whole body, whatever fields it has, and a verifier can name which field
was altered after signing (its digest no longer matches) rather than only say "invalid".
Canonical JSON: sorted keys, no whitespace, UTF-8 (`canonical_json`).

`verify_certificate` needs only `json`, `hashlib`, `base64` and `cryptography`: no store, no
config, no secret (`sisa certificate verify FILE --public-key KEY`). The rest of this module is
where the private key lives: `signing.key` in the store (PKCS#8 PEM, mode 0600, created with the
store or on first need), or the user's own PEM file named by `deletion.signing_key`. The private
key is never printed, logged or tracked; `sisa keys export` writes the public half.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sisa.config import SisaConfig
from sisa.storage import layout
from sisa.storage.errors import StoreError
from sisa.storage.store import Store

SIGNATURE = "signature"
ALGORITHM = "ed25519"
# What the signature block says it signed, so a verifier written elsewhere knows the rule.
FORMAT = "sisa-certificate/1: ed25519 over canonical JSON of {algorithm, fields, format, key_id, signed_at}"
SIGNED_KEYS = ("algorithm", "fields", "format", "key_id", "signed_at")


# -- verification (json + cryptography only) ------------------------------------------------------
def canonical_json(obj: Any) -> bytes:
    """The one byte string a JSON value signs as: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def field_digests(body: dict[str, Any]) -> dict[str, str]:
    """sha256 of each top-level field's canonical JSON (the signature block left out)."""
    return {k: hashlib.sha256(canonical_json(v)).hexdigest() for k, v in body.items() if k != SIGNATURE}


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 of the raw 32-byte public key: names the key a certificate was signed with."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _signed_message(block: dict[str, Any]) -> bytes:
    return canonical_json({k: block.get(k) for k in SIGNED_KEYS})


@dataclass
class CertificateCheck:
    """The verdict on one certificate: `valid` only when the signature verifies under the given
    key and every field is as signed. `problems` says what is wrong, one line each."""

    valid: bool
    key_id: str | None = None
    signed_by: str | None = None
    altered: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (what `sisa keys export` writes); ValueError otherwise."""
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"the public key should be an Ed25519 key, got {type(key).__name__}")
    return key


def verify_certificate(cert: dict[str, Any], public_key: Ed25519PublicKey) -> CertificateCheck:
    """Check a signed certificate against a public key, naming what differs from what was signed."""
    block = cert.get(SIGNATURE) if isinstance(cert, dict) else None
    if not isinstance(block, dict):
        return CertificateCheck(False, problems=["the certificate carries no signature block (it was never signed)"])
    given = key_id(public_key)
    check = CertificateCheck(False, key_id=given, signed_by=block.get("key_id"))
    try:
        public_key.verify(base64.b64decode(block.get("value", ""), validate=True), _signed_message(block))
    except (InvalidSignature, ValueError, TypeError):
        wrong_key = check.signed_by != given
        check.problems.append(
            "the signature is invalid: "
            + (
                f"the certificate names signing key {str(check.signed_by)[:16]}..., the public key given is "
                f"{given[:16]}... (the wrong public key, or the key id was altered)"
                if wrong_key
                else "the signature or the signed field digests were altered, or it was made with another key"
            )
        )
        return check
    signed = block.get("fields") or {}
    now = field_digests(cert)
    for name in sorted(set(signed) | set(now)):
        if name not in now:
            check.problems.append(f"field `{name}` was signed but is missing")
        elif name not in signed:
            check.problems.append(f"field `{name}` was added after signing")
        elif signed[name] != now[name]:
            check.problems.append(f"field `{name}` differs from what was signed")
        else:
            continue
        check.altered.append(name)
    check.valid = not check.problems
    return check


def sign_certificate(body: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The body with its signature block (any previous one replaced)."""
    block: dict[str, Any] = {
        "algorithm": ALGORITHM,
        "fields": field_digests(body),
        "format": FORMAT,
        "key_id": key_id(private_key.public_key()),
        "signed_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    block["value"] = base64.b64encode(private_key.sign(_signed_message(block))).decode("ascii")
    return {k: v for k, v in body.items() if k != SIGNATURE} | {SIGNATURE: block}


# -- where the private key lives ------------------------------------------------------------------
def public_key_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_private(pem: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise StoreError(
            f"{where} is not an unencrypted PEM private key ({type(e).__name__}); write one with "
            "`openssl genpkey -algorithm ed25519 -out KEY.pem`"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreError(f"{where} holds a {type(key).__name__}; certificates are signed with Ed25519 keys")
    return key


def create_signing_key(store: Store) -> Ed25519PrivateKey | None:
    """A new key in the store (`signing.key`, 0600 from its first byte); None if one is there
    already (another writer won the race: use that one)."""
    key = Ed25519PrivateKey.generate()
    fs = store.fs
    if not fs.is_local:
        if fs.exists(layout.SIGNING_KEY):
            return None
        fs.write_bytes(layout.SIGNING_KEY, _private_pem(key))
        return key
    final = fs.full(layout.SIGNING_KEY)
    os.makedirs(fs.full(layout.TMP), exist_ok=True)  # a crash leaves the half-written key where gc looks
    tmp = fs.full(f"{layout.TMP}/{uuid.uuid4().hex}.{layout.SIGNING_KEY}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_private_pem(key))
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, final)  # no-clobber: of two creators, one key wins
    except FileExistsError:
        return None
    finally:
        os.unlink(tmp)
    return key


def _too_open(path: str) -> bool:
    return bool(stat.S_IMODE(os.stat(path).st_mode) & 0o077)


def _configured_key(path: str, say: Callable[[str], None]) -> Ed25519PrivateKey:
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise StoreError(f"`deletion.signing_key` ({path}) cannot be read: {e.strerror}") from None
    if _too_open(path):
        say(f"warning: the signing key {path} can be read by other users; `chmod 600 {path}`")
    return _load_private(pem, f"`deletion.signing_key` ({path})")


def signing_key(store: Store, cfg: SisaConfig, say: Callable[[str], None] = print) -> Ed25519PrivateKey:
    """The key certificates of this store are signed with: `deletion.signing_key` when set, else
    the store's own, created now (and said so) for a store made before certificates were signed."""
    if cfg.deletion.signing_key:
        return _configured_key(cfg.deletion.signing_key, say)
    fs = store.fs
    if not fs.exists(layout.SIGNING_KEY):
        created = create_signing_key(store)
        if created is not None:
            say(
                f"this store had no signing key: created {layout.SIGNING_KEY} in it (mode 0600); "
                "`sisa keys export` writes its public key for auditors"
            )
            return created
    if fs.is_local and _too_open(fs.full(layout.SIGNING_KEY)):
        os.chmod(fs.full(layout.SIGNING_KEY), 0o600)
        say(f"{layout.SIGNING_KEY} could be read by other users; its mode is 0600 again")
    return _load_private(fs.read_bytes(layout.SIGNING_KEY), f"the store's {layout.SIGNING_KEY}")


def public_keys(store: Store, cfg: SisaConfig) -> dict[str, Ed25519PublicKey]:
    """key id → public key of every key this store's certificates may carry: the store's own and
    `deletion.signing_key`, whichever exist (a store that switched keys has certificates of both)."""
    found = []
    if store.fs.exists(layout.SIGNING_KEY):
        found.append(_load_private(store.fs.read_bytes(layout.SIGNING_KEY), f"the store's {layout.SIGNING_KEY}"))
    if cfg.deletion.signing_key:
        found.append(_configured_key(cfg.deletion.signing_key, say=lambda _: None))
    return {key_id(k.public_key()): k.public_key() for k in found}


def public_key(store: Store, cfg: SisaConfig) -> Ed25519PublicKey | None:
    """The public half of the key in effect, None when the store has none yet (nothing signed)."""
    if not cfg.deletion.signing_key and not store.fs.exists(layout.SIGNING_KEY):
        return None
    return signing_key(store, cfg, say=lambda _: None).public_key()
