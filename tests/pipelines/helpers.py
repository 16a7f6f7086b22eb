"""Helpers for the training and forgetting integration tests (tests/pipelines/).

Everything runs on configs/tiny.yaml (a random 2-layer Llama built in memory) against a real
store under tmp_path, real Parquet, and real MLflow (sqlite) where a test turns tracking on. The
config, CLI and trained-store helpers shared with tests/reliability/ are in tests/helpers.py.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from sisa.storage.store import Store

from sisa.data.sharding import assign_shards
from sisa.data.synthetic import make_people
from sisa.lineage import checkpoints, versions


# -- data -----------------------------------------------------------------------------------------
def people_in_shards(seed: int, num_shards: int, want: set[int], n: int, start: int, store_seed: int = 0) -> list[dict]:
    """Records of `n` fictitious people whose subject lands in one of the shards `want`."""
    rows: list[dict] = []
    batch_start = start
    while len({r["subject_id"] for r in rows}) < n:
        cand = make_people(n * 4, seed=seed, start=batch_start)
        subjects = sorted({r["subject_id"] for r in cand})
        shards = assign_shards(store_seed, subjects, subjects, num_shards)
        keep = {s for s, sh in zip(subjects, shards, strict=True) if int(sh) in want}
        for r in cand:
            if r["subject_id"] in keep and len({x["subject_id"] for x in rows} | {r["subject_id"]}) <= n:
                rows.append(r)
        batch_start += n * 4
    return rows


# -- store state ----------------------------------------------------------------------------------
def checkpoint_dir(store: Store, checkpoint_id: str) -> Path:
    return Path(store.fs.full(f"checkpoints/shard={checkpoints.shard_of(checkpoint_id):05d}/{checkpoint_id}"))


def serving_shards(store: Store) -> dict[int, str]:
    return versions.shard_checkpoints(versions.current(store))


def chain(store: Store, checkpoint_id: str) -> dict[int, str]:
    """slice_idx → checkpoint_id along a checkpoint's ancestry (itself included)."""
    out: dict[int, str] = {}
    cid: str | None = checkpoint_id
    while cid is not None:
        out[checkpoints.slice_of(cid)] = cid
        cid = checkpoints.read_manifest(store, checkpoints.shard_of(cid), cid).get("parent_checkpoint_id")
    return out


def all_checkpoints(store: Store) -> dict[tuple[int, int], list[str]]:
    """(shard_id, slice_idx) → checkpoint ids on disk."""
    out: dict[tuple[int, int], list[str]] = {}
    for shard in range(store.num_shards):
        for cid in checkpoints.checkpoint_ids(store, shard):
            out.setdefault((shard, checkpoints.slice_of(cid)), []).append(cid)
    return out


def adapter_tensors(store: Store, checkpoint_id: str) -> dict[str, torch.Tensor]:
    """The adapter of a checkpoint, after the sha256 check of every file."""
    return checkpoints.load_adapter_tensors(checkpoints.open_checkpoint(store, checkpoint_id))


def optimizer_tensors(store: Store, checkpoint_id: str) -> dict[str, torch.Tensor]:
    return checkpoints.load_optimizer_state(checkpoints.open_checkpoint(store, checkpoint_id))[0]


def load_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert set(a) == set(b), f"{what}: different tensor names {sorted(set(a) ^ set(b))}"
    assert a, f"{what}: no tensors"
    differ = [k for k in sorted(a) if not torch.equal(a[k], b[k])]
    assert not differ, f"{what}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"


def layout_of(store: Store) -> dict[tuple[int, int], list[str]]:
    """(shard_id, slice_idx) → record ids in the order training reads them."""
    out = {}
    for shard in range(store.num_shards):
        for sl in checkpoints.shard_slices(store, shard):
            t = store.read_slice(shard, sl, columns=["record_id"])
            out[(shard, sl)] = [] if t is None else t["record_id"].to_pylist()
    return out
