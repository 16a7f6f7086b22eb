"""Checkpoints: one folder per (shard, slice, lineage), safetensors + JSON, verified on load.

    checkpoints/shard=00001/s00001-l000003-<digest>/
        adapter_model.safetensors, adapter_config.json   peft's own layout: PeftModel.from_pretrained(base, dir)
        optimizer.safetensors, optimizer.json            AdamW state, so training continues exactly
        lineage.parquet                                  keyed hashes of the record ids this slice added, and of
                                                         each record's (id, content): a rectified record's old
                                                         content is told apart from its new one
        manifest.json                                    ids, parent, lineage digest, fingerprints, versions,
                                                         the sha256 of every file

This module is the one home of everything about a checkpoint: its id (built and parsed here
only), its files, the parent chain (walked here only) and lineage reads.

The checkpoint id is a content address of what determines its bytes: shard, slice, parent, the
lineage digest (over keyed hashes of every record id trained so far) and the training and base
model fingerprints. Never pickle: nothing here calls torch.load.

No RNG state is stored: the trainer seeds torch from (store seed, shard_id, slice_idx) at the
start of every slice, so the RNG a slice sees never depends on what ran before it. Checkpoints
written by older versions list an `rng.safetensors`; it is verified like every file and unused.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from sisa.storage import layout
from sisa.storage.errors import IntegrityError, NotFoundError
from sisa.storage.store import Store, now_iso

if TYPE_CHECKING:  # torch loads only where tensors are read or written: `sisa ingest` needs none
    import torch

MANIFEST = layout.CHECKPOINT_MANIFEST
LINEAGE = "lineage.parquet"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_STATE = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
FORMAT_VERSION = 1


def content_hashes(store: Store, record_ids: list[str], content_sha256: list[str]) -> list[str]:
    """Keyed hashes of (record id, content sha256): what a checkpoint trained on, down to the text.
    A rectification keeps the id and changes the content; its old hash is what gets forgotten."""
    return store.hash_ids([f"content\x00{rid}\x00{sha}" for rid, sha in zip(record_ids, content_sha256, strict=True)])


def lineage_digest(parent_digest: str | None, record_hashes: list[str]) -> str:
    """Digest of everything trained so far: the parent's digest plus this slice's records (sorted)."""
    h = hashlib.sha256((parent_digest or "root").encode())
    for rh in sorted(record_hashes):
        h.update(rh.encode())
    return h.hexdigest()


# -- the id ------------------------------------------------------------------------------------
def make_checkpoint_id(
    shard_id: int, slice_idx: int, parent_id: str | None, lineage: str, training_fp: str, base_fp: str
) -> str:
    """`sSSSSS-lLLLLLL-<digest>`: shard and slice readable in the name, the rest a content address."""
    blob = json.dumps([shard_id, slice_idx, parent_id, lineage, training_fp, base_fp]).encode()
    return f"s{shard_id:05d}-l{slice_idx:06d}-{hashlib.sha256(blob).hexdigest()[:16]}"


def make_approximate_id(parent_id: str | None, shard_id: int | None = None) -> str:
    """An approximate (fast-path) checkpoint: same shard and slice as its parent (no parent: a
    fresh adapter of `shard_id`, slice 0), a random tail (it is not reproducible content; its own
    lineage names the records it read, so the purge finds it)."""
    if parent_id is None:
        if shard_id is None:
            raise ValueError("an approximate checkpoint without a parent needs its shard_id")
        return f"s{shard_id:05d}-l{0:06d}-approx{secrets.token_hex(5)}"
    return f"s{shard_of(parent_id):05d}-l{slice_of(parent_id):06d}-approx{secrets.token_hex(5)}"


def is_approximate(checkpoint_id: str) -> bool:
    """A fast-path checkpoint: computed from the text being forgotten, never a clean start."""
    return "-approx" in checkpoint_id


def shard_of(checkpoint_id: str) -> int:
    return int(checkpoint_id.split("-")[0][1:])


def slice_of(checkpoint_id: str) -> int:
    return int(checkpoint_id.split("-")[1][1:])


# -- what a store holds ------------------------------------------------------------------------
def checkpoint_ids(store: Store, shard_id: int) -> list[str]:
    return store.checkpoint_folders(shard_id)


def shard_slices(store: Store, shard_id: int) -> list[int]:
    """The shard's slices: those with committed records, and those a checkpoint trained (a slice
    emptied by a deletion stays a slice: its checkpoint exists and seals it)."""
    trained = {slice_of(c) for c in checkpoint_ids(store, shard_id)}
    return sorted(set(store.record_slices(shard_id)) | trained)


def sealed_slices(store: Store) -> dict[int, int]:
    """shard_id → highest slice_idx that some checkpoint has trained (sealed against appends)."""
    out: dict[int, int] = {}
    for shard_id in range(store.num_shards):
        for cid in checkpoint_ids(store, shard_id):
            out[shard_id] = max(out.get(shard_id, -1), slice_of(cid))
    return out


@dataclass
class Checkpoint:
    """A checkpoint that is present and verified; `path` is a local folder holding its files.

    On a local store `path` is the checkpoint's own folder. On an object store it is a download
    in the system temp dir, removed by `close()`: open it with `with open_checkpoint(...) as c:`
    so nothing is left behind (adapter weights are derived from record text).
    """

    checkpoint_id: str
    manifest: dict[str, Any]
    path: str
    downloaded: bool = False

    def close(self) -> None:
        if self.downloaded:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- optimizer and RNG state as tensors (safetensors cannot hold pickled objects) --------------
def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torch

    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{idx}.{name}"] = t.detach().contiguous().clone()
    meta = {"param_groups": sd["param_groups"]}
    return tensors, meta


def tensors_to_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# -- writing -----------------------------------------------------------------------------------
def write_checkpoint(
    store: Store,
    checkpoint_id: str,
    manifest: dict[str, Any],
    save_adapter_fn,
    optimizer: torch.optim.Optimizer,
    record_hashes: list[str],
    record_content_hashes: list[str] | None = None,
) -> dict[str, Any]:
    """Stage every file in a temporary folder, hash it, then move the folder into place.

    `save_adapter_fn(dir)` writes the adapter in peft's layout. Returns the final manifest.
    Writing a checkpoint that already exists (same content address) is a no-op.
    """
    shard_id = manifest["shard_id"]
    rel = layout.checkpoint_dir(shard_id, checkpoint_id)
    if store.fs.exists(f"{rel}/{MANIFEST}"):
        return read_manifest(store, shard_id, checkpoint_id)
    staging = tempfile.mkdtemp(prefix="sisa-ckpt-", dir=_local_tmp(store))
    try:
        save_adapter_fn(staging)
        opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
        from safetensors.torch import save_file

        save_file(opt_tensors, os.path.join(staging, OPTIMIZER_STATE))
        _write_json(os.path.join(staging, OPTIMIZER_META), opt_meta)
        pq.write_table(lineage_table(record_hashes, record_content_hashes), os.path.join(staging, LINEAGE))
        files = {name: _sha256_file(os.path.join(staging, name)) for name in sorted(os.listdir(staging))}
        manifest = {
            **manifest,
            "checkpoint_id": checkpoint_id,
            "format_version": FORMAT_VERSION,
            "created_at": now_iso(),
            "files": files,
            "library_versions": library_versions(),
        }
        _write_json(os.path.join(staging, MANIFEST), manifest)
        _publish(store, staging, rel)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def lineage_table(record_hashes: list[str], record_content_hashes: list[str] | None) -> pa.Table:
    """One row per record, sorted by id hash; `content_hash` pairs with its row's `record_hash`."""
    if record_content_hashes is None:
        return pa.table({"record_hash": pa.array(sorted(record_hashes), pa.string())})
    pairs = sorted(zip(record_hashes, record_content_hashes, strict=True))
    return pa.table(
        {
            "record_hash": pa.array([a for a, _ in pairs], pa.string()),
            "content_hash": pa.array([b for _, b in pairs], pa.string()),
        }
    )


def _publish(store: Store, staging: str, rel: str) -> None:
    if store.fs.is_local:
        dst = store.fs.full(rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.rename(staging, dst)
        except OSError:
            if not os.path.exists(os.path.join(dst, MANIFEST)):
                raise
        return
    # Object store: files first, the manifest last, so a checkpoint exists once its manifest does.
    names = sorted(os.listdir(staging))
    for name in [n for n in names if n != MANIFEST] + [MANIFEST]:
        with open(os.path.join(staging, name), "rb") as f:
            store.fs.write_bytes(f"{rel}/{name}", f.read())


def _local_tmp(store: Store) -> str | None:
    if store.fs.is_local:
        path = store.fs.full(layout.TMP)
        os.makedirs(path, exist_ok=True)
        return path
    return None


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


# -- reading -----------------------------------------------------------------------------------
def read_manifest(store: Store, shard_id: int, checkpoint_id: str) -> dict[str, Any]:
    rel = f"{layout.checkpoint_dir(shard_id, checkpoint_id)}/{MANIFEST}"
    if not store.fs.exists(rel):
        raise NotFoundError(
            f"checkpoint {checkpoint_id} of shard {shard_id} is missing from the store (purged or never written)"
        )
    try:
        return store.fs.read_json(rel)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError: the manifest itself is damaged
        raise IntegrityError(
            f"checkpoint {checkpoint_id}: file {MANIFEST} is damaged (not valid JSON); restore it or retrain the shard"
        ) from None


def open_checkpoint(store: Store, checkpoint_id: str, verify: bool = True) -> Checkpoint:
    """Locate a checkpoint and check the sha256 of every file it lists (and that nothing else is
    there). Close it when done (a `with` block): on an object store its files were downloaded."""
    shard_id = shard_of(checkpoint_id)
    manifest = read_manifest(store, shard_id, checkpoint_id)
    rel = layout.checkpoint_dir(shard_id, checkpoint_id)
    if store.fs.is_local:
        ckpt = Checkpoint(checkpoint_id, manifest, store.fs.full(rel))
    else:
        ckpt = Checkpoint(checkpoint_id, manifest, tempfile.mkdtemp(prefix="sisa-ckpt-"), downloaded=True)
    try:
        if ckpt.downloaded:
            for name in manifest["files"]:
                with open(os.path.join(ckpt.path, name), "wb") as f:
                    f.write(store.fs.read_bytes(f"{rel}/{name}"))
        if verify:
            verify_files(ckpt.path, manifest, checkpoint_id)
    except BaseException:
        ckpt.close()
        raise
    return ckpt


def verify_files(path: str, manifest: dict[str, Any], checkpoint_id: str) -> None:
    present = set(os.listdir(path)) - {MANIFEST}
    listed = set(manifest["files"]) - {MANIFEST}
    extra = sorted(present - listed)
    if extra:
        raise IntegrityError(
            f"checkpoint {checkpoint_id} holds files its manifest does not list: {', '.join(extra)}; "
            "they are never loaded — remove them"
        )
    for name, sha in manifest["files"].items():
        fp = os.path.join(path, name)
        if not os.path.exists(fp):
            raise IntegrityError(f"checkpoint {checkpoint_id}: file {name} is missing")
        got = _sha256_file(fp)
        if got != sha:
            raise IntegrityError(
                f"checkpoint {checkpoint_id}: file {name} is damaged (sha256 {got[:12]}... != recorded {sha[:12]}...)"
            )


def load_optimizer_state(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    tensors = load_file(os.path.join(ckpt.path, OPTIMIZER_STATE))
    with open(os.path.join(ckpt.path, OPTIMIZER_META)) as f:
        meta = json.load(f)
    return tensors, meta


def load_adapter_tensors(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(ckpt.path, ADAPTER_WEIGHTS))


def adapter_sha256(store: Store, checkpoint_id: str) -> str:
    """The recorded sha256 of a checkpoint's adapter weights (from its manifest)."""
    return read_manifest(store, shard_of(checkpoint_id), checkpoint_id)["files"][ADAPTER_WEIGHTS]


# -- the parent chain and lineage --------------------------------------------------------------
def parent_of(store: Store, checkpoint_id: str) -> str | None:
    return read_manifest(store, shard_of(checkpoint_id), checkpoint_id).get("parent_checkpoint_id")


def chain(store: Store, checkpoint_id: str | None) -> Iterator[str]:
    """The checkpoint and its ancestors, newest first: the one place the parent chain is walked.
    A missing ancestor raises NotFoundError (it was purged: the chain is tainted)."""
    cid = checkpoint_id
    while cid is not None:
        yield cid
        cid = parent_of(store, cid)


def ancestor_before(store: Store, checkpoint_id: str | None, slice_idx: int) -> str | None:
    """The checkpoint in `checkpoint_id`'s chain that trained slice `slice_idx - 1` (where a
    retrain from `slice_idx` starts); None when `slice_idx` is 0 (retrain from scratch)."""
    if slice_idx <= 0:
        return None
    return next((cid for cid in chain(store, checkpoint_id) if slice_of(cid) <= slice_idx - 1), None)


def parents(store: Store) -> dict[str, str | None]:
    """checkpoint_id → parent id of every checkpoint with a manifest in the store."""
    out: dict[str, str | None] = {}
    for shard_id in range(store.num_shards):
        for cid in checkpoint_ids(store, shard_id):
            rel = f"{layout.checkpoint_dir(shard_id, cid)}/{MANIFEST}"
            if store.fs.exists(rel):
                out[cid] = store.fs.read_json(rel).get("parent_checkpoint_id")
    return out


def _lineage_file(store: Store, checkpoint_id: str) -> pa.Table:
    rel = f"{layout.checkpoint_dir(shard_of(checkpoint_id), checkpoint_id)}/{LINEAGE}"
    if not store.fs.exists(rel):
        raise NotFoundError(f"checkpoint {checkpoint_id} has no {LINEAGE} (purged or never written)")
    return store.fs.read_parquet(rel)


def own_lineage(store: Store, checkpoint_id: str) -> list[str]:
    """Keyed hashes of the records this checkpoint's slice added: their ids and, where recorded,
    their (id, content) pairs. Reads lineage.parquet only (straight from the store, remote or
    local: nothing is downloaded to a temp folder)."""
    return _hashes(_lineage_file(store, checkpoint_id))


def _hashes(lineage: pa.Table) -> list[str]:
    out = lineage["record_hash"].to_pylist()
    if "content_hash" in lineage.column_names:
        out += lineage["content_hash"].to_pylist()
    return out


def _lineage_tables(store: Store, shards: list[int] | None) -> Iterator[tuple[str, pa.Table]]:
    """(checkpoint id, its own lineage table) of every checkpoint of these shards (default all)
    that still has one."""
    for shard_id in shards if shards is not None else range(store.num_shards):
        for cid in checkpoint_ids(store, shard_id):
            try:
                yield cid, _lineage_file(store, cid)
            except NotFoundError:
                continue


def legacy_holding(store: Store, id_hashes: set[str], shards: list[int] | None = None) -> set[str]:
    """Checkpoints written before lineage recorded content that trained one of these records:
    which text they saw is unknown, so a rectification treats them as holding the old one."""
    return {
        cid
        for cid, table in _lineage_tables(store, shards)
        if "content_hash" not in table.column_names and id_hashes.intersection(table["record_hash"].to_pylist())
    }


def full_lineage(store: Store, checkpoint_id: str) -> set[str]:
    """Keyed hashes of every record in a checkpoint's history (its own slice and its ancestors')."""
    out: set[str] = set()
    for cid in chain(store, checkpoint_id):
        out.update(own_lineage(store, cid))
    return out


def checkpoints_holding(store: Store, hashes: set[str], shards: list[int] | None = None) -> set[str]:
    """Checkpoints that trained one of the records themselves (their own lineage file: the
    records' id hashes and, where recorded, their (id, content) hashes)."""
    return {cid for cid, table in _lineage_tables(store, shards) if hashes.intersection(_hashes(table))}


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("sisa", "torch", "transformers", "peft", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    return out
