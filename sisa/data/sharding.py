"""Pure functions of the method: shard and slice assignment, seed derivation.

Shards: `shard_id = blake2b(subject_id or record_id, key=shard key) mod S`, so every record of one
person lands in one shard and a deletion by subject touches one shard. The shard key derives from
the store seed (not from the store's secret salt) so that a store rebuilt from the same data and
config reproduces the same shards, and therefore the same adapters, bit for bit.

Slices: records fill a shard's open slice in arrival order up to `slice_size`; a slice that a
checkpoint has trained is sealed, and later records open the next slice (slices are append-only).

Seeds: every random choice in training derives from (store seed, shard_id, slice_idx, purpose),
never from time or row order, which is what makes a retrain reproduce a from-scratch run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sisa.storage.keys import keyed_int64


def shard_key(store_seed: int) -> bytes:
    return hashlib.blake2b(f"sisa-shard-key:{store_seed}".encode(), digest_size=32).digest()


def assign_shards(
    store_seed: int,
    record_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    subject_ids: Sequence[str | None] | pa.Array | pa.ChunkedArray,
    num_shards: int,
) -> np.ndarray:
    """shard_id per record: by subject when it has one (not null, not ""), else by record id."""
    if len(record_ids) != len(subject_ids):
        raise ValueError(f"{len(record_ids)} record ids but {len(subject_ids)} subject ids")
    if len(record_ids) == 0:
        return np.empty(0, dtype=np.int32)
    records, subjects = (
        x if isinstance(x, pa.Array | pa.ChunkedArray) else pa.array(list(x), pa.string())
        for x in (record_ids, subject_ids)
    )
    no_subject = pc.fill_null(pc.equal(subjects, ""), True)
    keys = pc.if_else(no_subject, records, subjects)
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    # Hash each distinct key once (a person with many records costs one hash); Arrow finds them.
    encoded = pc.dictionary_encode(keys)
    hashed = np.asarray(keyed_int64(shard_key(store_seed), encoded.dictionary.to_pylist()), dtype=np.uint64)
    per_key = (hashed % np.uint64(num_shards)).astype(np.int32)
    return per_key[encoded.indices.to_numpy(zero_copy_only=False)]


def assign_slices(shard_ids: np.ndarray, open_slices: dict[int, tuple[int, int]], slice_size: int) -> np.ndarray:
    """slice_idx per record, in arrival order within each shard.

    `open_slices[shard] = (slice_idx, records already in it)` for a shard whose last slice is not
    sealed; shards not in it start at their next free slice, given as `(slice_idx, 0)`.
    """
    shard_ids = np.asarray(shard_ids, dtype=np.int64)
    out = np.empty(len(shard_ids), dtype=np.int32)
    if len(shard_ids) == 0:
        return out
    order = np.argsort(shard_ids, kind="stable")
    sorted_shards = shard_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_shards[1:] != sorted_shards[:-1]])
    ends = np.r_[starts[1:], len(sorted_shards)]
    for s, e in zip(starts, ends, strict=True):
        shard = int(sorted_shards[s])
        first_slice, filled = open_slices.get(shard, (0, 0))
        pos = np.arange(e - s) + filled
        out[order[s:e]] = first_slice + pos // slice_size
    return out


def derive_seed(store_seed: int, shard_id: int, slice_idx: int, purpose: str = "train") -> int:
    """A 63-bit seed from (store seed, shard, slice, purpose); stable across processes."""
    blob = f"{store_seed}:{shard_id}:{slice_idx}:{purpose}".encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big") >> 1
