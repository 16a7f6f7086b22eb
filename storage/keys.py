"""Keyed hashes: the store's secret salt and blake2b over it.

Ids outside the live index (the deletion ledger, checkpoint lineage, certificates) are kept only
as keyed hashes: without the salt nobody can test a guessed id against them, and destroying the
salt makes them meaningless. Shard assignment uses the same keyed hash so it cannot be steered.
"""

from __future__ import annotations

import hashlib
import secrets

from sisa.storage.fs import StoreFS
from sisa.storage.layout import SECRET_KEY

KEY_BYTES = 32
DIGEST_BYTES = 16


def create_key(fs: StoreFS) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    fs.write_bytes(SECRET_KEY, key.hex().encode())
    if fs.is_local:
        import os

        os.chmod(fs.full(SECRET_KEY), 0o600)
    return key


def load_key(fs: StoreFS) -> bytes:
    return bytes.fromhex(fs.read_bytes(SECRET_KEY).decode().strip())


def keyed_hash(key: bytes, value: str) -> str:
    """Hex digest of blake2b(value, key); 32 hex characters."""
    return hashlib.blake2b(value.encode("utf-8"), key=key, digest_size=DIGEST_BYTES).hexdigest()


def keyed_hashes(key: bytes, values: list[str]) -> list[str]:
    h = hashlib.blake2b(key=key, digest_size=DIGEST_BYTES)
    out = []
    for v in values:
        c = h.copy()
        c.update(v.encode("utf-8"))
        out.append(c.hexdigest())
    return out


def keyed_int64(key: bytes, values: list[str]) -> list[int]:
    """Unsigned 64-bit keyed hashes (for shard assignment: value mod S)."""
    h = hashlib.blake2b(key=key, digest_size=8)
    out = []
    for v in values:
        c = h.copy()
        c.update(v.encode("utf-8"))
        out.append(int.from_bytes(c.digest(), "big"))
    return out
