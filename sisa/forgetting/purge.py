"""The purge: every checkpoint whose lineage holds a forgotten record is deleted, with its
descendants; the versions that held one are marked purged and their MLflow runs deleted and
garbage-collected; the store's tmp/ and cache/ are emptied. With `serving.engine: vllm`, the vLLM
server unloads every purged adapter first (sisa/serving/vllm_adapters.py), or the purge fails."""

from __future__ import annotations

from typing import Any

from sisa.config import SisaConfig
from sisa.forgetting.planner import tainted_checkpoints
from sisa.lineage import checkpoints, versions
from sisa.lineage.requests_ledger import DeletionRequest, RequestKind, VersionKind
from sisa.serving import mirror, vllm_adapters
from sisa.storage import layout
from sisa.storage.errors import NotFoundError
from sisa.storage.faults import maybe_die
from sisa.storage.store import Store


def purge_targets(store: Store, reqs: list[DeletionRequest]) -> tuple[set[str], set[str]]:
    """What the purge of these requests looks for: the lineage hashes they forget, and the
    checkpoints to go whatever their lineage: those older than content lineage that trained a
    rectified record (which text they saw is unknown, so they go as if they held the old one:
    fail closed), and the approximate ones their --fast version served (an edit bridge never saw
    the old text, but the exact version supersedes it: approximate versions never outlive it)."""
    hashes = set().union(*(set(r.id_hashes) for r in reqs))
    rectified = set().union(*(set(r.record_hashes) for r in reqs if r.kind == RequestKind.RECTIFY))
    also = checkpoints.legacy_holding(store, rectified) if rectified else set()
    for r in reqs:
        fast = r.versions.get(VersionKind.APPROXIMATE)
        if fast is not None:
            also |= {c for c in versions.read(store, fast).shards.values() if _bridge_of(store, c, r.request_id)}
    return hashes, also


def _bridge_of(store: Store, checkpoint_id: str, request_id: str) -> bool:
    """An approximate checkpoint this request wrote (not another request's, still in flight, that
    served beside it), still present (a resumed purge may have deleted it already)."""
    if not checkpoints.is_approximate(checkpoint_id):
        return False
    try:
        return (
            checkpoints.read_manifest(store, checkpoints.shard_of(checkpoint_id), checkpoint_id).get("request_id")
            == request_id
        )
    except NotFoundError:
        return False


def tainted(store: Store, hashes: set[str], also: set[str] = frozenset()) -> set[str]:
    parents = checkpoints.parents(store)
    # A checkpoint whose parent is gone descends from a purged one: a purge cut short by a crash
    # may have deleted the parent (the checkpoint that held the records) but not its children,
    # whose own lineage files do not name the records. They are tainted all the same.
    orphans = {cid for cid, parent in parents.items() if parent is not None and parent not in parents}
    return tainted_checkpoints(parents, checkpoints.checkpoints_holding(store, hashes) | orphans | also)


def purge(
    store: Store, cfg: SisaConfig, hashes: set[str], request_id: str, also: set[str] = frozenset()
) -> dict[str, Any]:
    """Delete every tainted checkpoint (and `also` those, with their descendants), mark versions
    holding one purged, purge MLflow, clean caches."""
    dead = tainted(store, hashes, also)
    # First, so that a vLLM server out of reach stops the purge before anything is destroyed.
    unloaded = vllm_adapters.unload_purged(cfg, dead)
    purged_versions = []
    for v in versions.all_versions(store):
        if v.status != versions.PURGED and set(v.shards.values()) & dead:
            versions.mark_purged(store, v, request_id)
            purged_versions.append(v.model_version)
    already = [v.model_version for v in versions.all_versions(store) if v.purged_by == request_id]
    mirror.purge_versions(store, cfg, already)
    deleted = []
    for cid in sorted(dead):
        rel = layout.checkpoint_dir(checkpoints.shard_of(cid), cid)
        if store.fs.exists(rel):
            store.fs.delete(rel)
            deleted.append(cid)
            maybe_die("forget-during-purge")
    for rel in (layout.TMP, layout.CACHE):
        store.fs.delete(rel)
    report = {
        "checkpoints": sorted(dead),
        "versions": sorted(already),
        "newly_purged_versions": purged_versions,
        "deleted_now": deleted,
    }
    if cfg.serving.engine == "vllm":
        report["unloaded_from_vllm"] = unloaded
    return report
