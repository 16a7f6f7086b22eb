"""Keyed hashes (storage/keys.py): the store's secret salt, written once with owner-only
permissions, and blake2b over it, the same one value at a time or in a batch."""

from __future__ import annotations

import hashlib
import os
import stat

from sisa.storage.fs import StoreFS
from sisa.storage.keys import (
    DIGEST_BYTES,
    KEY_BYTES,
    create_key,
    keyed_hash,
    keyed_hashes,
    keyed_int64,
    load_key,
)
from sisa.storage.layout import SECRET_KEY


def test_the_key_is_random_private_and_reads_back(tmp_path):
    fs = StoreFS(str(tmp_path / "s"))
    key = create_key(fs)
    assert len(key) == KEY_BYTES and load_key(fs) == key
    assert stat.S_IMODE(os.stat(fs.full(SECRET_KEY)).st_mode) == 0o600
    assert create_key(StoreFS(str(tmp_path / "t"))) != key


def test_keyed_hashes_depend_on_the_key_and_match_one_by_one():
    key, other = b"k" * KEY_BYTES, b"o" * KEY_BYTES
    values = ["person-00001", "person-00002", "", "é ü"]
    batch = keyed_hashes(key, values)
    assert batch == [keyed_hash(key, v) for v in values]
    assert batch[0] == hashlib.blake2b(b"person-00001", key=key, digest_size=DIGEST_BYTES).hexdigest()
    assert all(len(h) == 2 * DIGEST_BYTES for h in batch) and len(set(batch)) == len(values)
    assert keyed_hashes(other, values) != batch  # without the key, a guessed id cannot be tested
    assert keyed_hashes(key, []) == []


def test_keyed_int64_is_unsigned_64_bit_and_keyed():
    key = b"k" * KEY_BYTES
    ints = keyed_int64(key, ["a", "b", "a"])
    assert ints[0] == ints[2] != ints[1] and all(0 <= i < 2**64 for i in ints)
    assert ints[0] == int.from_bytes(hashlib.blake2b(b"a", key=key, digest_size=8).digest(), "big")
    assert keyed_int64(b"o" * KEY_BYTES, ["a"])[0] != ints[0]
