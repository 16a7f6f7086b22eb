"""Checkpoints: one folder per (shard, slice, lineage), safetensors + JSON, verified on load.

    checkpoints/shard=00001/s00001-l000003-<digest>/
        adapter_model.safetensors, adapter_config.json   peft's own layout: PeftModel.from_pretrained(base, dir)
        optimizer.safetensors, optimizer.json            AdamW state, so training continues exactly
        rng.safetensors                                  torch RNG state after the slice
        lineage.parquet                                  keyed hashes of the record ids this slice added
        manifest.json                                    ids, parent, lineage digest, fingerprints, versions, sha256 of every file

The checkpoint id is a content address of what determines its bytes: shard, slice, parent, the
lineage digest (over keyed hashes of every record id trained so far) and the training and base
model fingerprints. Never pickle: nothing here calls torch.load.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from storage import layout
from storage.errors import IntegrityError, NotFoundError
from storage.store import Store, now_iso

MANIFEST = "manifest.json"
LINEAGE = "lineage.parquet"
FORMAT_VERSION = 1


def lineage_digest(parent_digest: str | None, record_hashes: list[str]) -> str:
    """Digest of everything trained so far: the parent's digest plus this slice's records (sorted)."""
    h = hashlib.sha256((parent_digest or "root").encode())
    for rh in sorted(record_hashes):
        h.update(rh.encode())
    return h.hexdigest()


def make_checkpoint_id(shard_id: int, slice_idx: int, parent_id: str | None, lineage: str, training_fp: str, base_fp: str) -> str:
    blob = json.dumps([shard_id, slice_idx, parent_id, lineage, training_fp, base_fp]).encode()
    return f"s{shard_id:05d}-l{slice_idx:06d}-{hashlib.sha256(blob).hexdigest()[:16]}"


@dataclass
class Checkpoint:
    """A checkpoint that is present and verified; `path` is a local folder holding its files."""

    checkpoint_id: str
    manifest: dict[str, Any]
    path: str


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- optimizer and RNG state as tensors (safetensors cannot hold pickled objects) --------------
def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
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


def rng_to_tensors() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


# -- writing -----------------------------------------------------------------------------------
def write_checkpoint(
    store: Store,
    checkpoint_id: str,
    manifest: dict[str, Any],
    save_adapter_fn,
    optimizer: torch.optim.Optimizer,
    record_hashes: list[str],
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
        save_file(opt_tensors, os.path.join(staging, "optimizer.safetensors"))
        _write_json(os.path.join(staging, "optimizer.json"), opt_meta)
        save_file(rng_to_tensors(), os.path.join(staging, "rng.safetensors"))
        pq.write_table(pa.table({"record_hash": pa.array(sorted(record_hashes), pa.string())}), os.path.join(staging, LINEAGE))
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
        raise NotFoundError(f"checkpoint {checkpoint_id} of shard {shard_id} is missing from the store (purged or never written)")
    try:
        return store.fs.read_json(rel)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError: the manifest itself is damaged
        raise IntegrityError(f"checkpoint {checkpoint_id}: file {MANIFEST} is damaged (not valid JSON); restore it or retrain the shard") from None


def shard_of(checkpoint_id: str) -> int:
    return int(checkpoint_id.split("-")[0][1:])


def open_checkpoint(store: Store, checkpoint_id: str, verify: bool = True) -> Checkpoint:
    """Locate a checkpoint and check the sha256 of every file it lists (and that nothing else is there)."""
    shard_id = shard_of(checkpoint_id)
    manifest = read_manifest(store, shard_id, checkpoint_id)
    rel = layout.checkpoint_dir(shard_id, checkpoint_id)
    if store.fs.is_local:
        path = store.fs.full(rel)
    else:
        path = tempfile.mkdtemp(prefix="sisa-ckpt-")
        for name in manifest["files"]:
            with open(os.path.join(path, name), "wb") as f:
                f.write(store.fs.read_bytes(f"{rel}/{name}"))
    if verify:
        verify_files(path, manifest, checkpoint_id)
    return Checkpoint(checkpoint_id, manifest, path)


def verify_files(path: str, manifest: dict[str, Any], checkpoint_id: str) -> None:
    present = set(os.listdir(path)) - {MANIFEST}
    listed = set(manifest["files"]) - {MANIFEST}
    extra = sorted(present - listed)
    if extra:
        raise IntegrityError(f"checkpoint {checkpoint_id} holds files its manifest does not list: {', '.join(extra)}; they are never loaded — remove them")
    for name, sha in manifest["files"].items():
        fp = os.path.join(path, name)
        if not os.path.exists(fp):
            raise IntegrityError(f"checkpoint {checkpoint_id}: file {name} is missing")
        got = _sha256_file(fp)
        if got != sha:
            raise IntegrityError(f"checkpoint {checkpoint_id}: file {name} is damaged (sha256 {got[:12]}... != recorded {sha[:12]}...)")


def load_optimizer_state(ckpt: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = load_file(os.path.join(ckpt.path, "optimizer.safetensors"))
    with open(os.path.join(ckpt.path, "optimizer.json")) as f:
        meta = json.load(f)
    return tensors, meta


def load_adapter_tensors(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(ckpt.path, "adapter_model.safetensors"))


def lineage_hashes(ckpt: Checkpoint) -> list[str]:
    return pq.read_table(os.path.join(ckpt.path, LINEAGE))["record_hash"].to_pylist()


def full_lineage(store: Store, checkpoint_id: str) -> set[str]:
    """Keyed hashes of every record in a checkpoint's history (its own slice and its ancestors')."""
    out: set[str] = set()
    cid: str | None = checkpoint_id
    while cid:
        ckpt = open_checkpoint(store, cid, verify=False)
        out.update(lineage_hashes(ckpt))
        cid = ckpt.manifest.get("parent_checkpoint_id")
    return out


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("sisa", "torch", "transformers", "peft", "safetensors"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "unknown"
    return out
