"""Re-checking what serves: integrity, lineage and purge of every completed request (or one), and
with `replay` the exactness proof, `sisa verify` and `SisaStore.verify`.

1. Integrity: every file of every serving checkpoint matches the sha256 in its manifest.
2. Lineage: no serving checkpoint's lineage (its own slice and all its ancestors) holds the keyed
   hash of a deleted record, for every completed request (or the one named).
3. Purge: every checkpoint a request purged is gone from disk, every version that held one is
   marked purged, and its MLflow registered version no longer exists.
4. Replay: retrain the affected shards (every shard when no request is named) from scratch on
   the live data, in a scratch folder, and compare each final adapter with the serving one,
   tensor by tensor with torch.equal. Equal tensors mean the serving model is exactly the model
   that training on the remaining data alone produces.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import torch
from safetensors.torch import load_file

from sisa.config import SisaConfig
from sisa.forgetting import lineage_check
from sisa.lineage import DeletionRequest, RequestStatus, checkpoints, requests_ledger, versions
from sisa.serving import registered_version_exists
from sisa.storage import layout
from sisa.storage.errors import IntegrityError, NotFoundError
from sisa.storage.store import Store
from sisa.training import ShardTask, scheduler, train_shard


def check_integrity(store: Store, shards: dict[int, str]) -> list[str]:
    """A problem per serving checkpoint whose files do not match their manifest."""
    problems = []
    for _, cid in sorted(shards.items()):
        try:
            checkpoints.open_checkpoint(store, cid, verify=True).close()
        except (IntegrityError, NotFoundError) as e:
            problems.append(e.message)
    return problems


def check_purge(store: Store, cfg: SisaConfig, req: DeletionRequest) -> list[str]:
    """A problem per checkpoint, version or MLflow version a request purged that is still there."""
    problems = []
    purge = req.purge or {}
    for cid in purge.get("checkpoints", []):
        if store.fs.exists(layout.checkpoint_dir(checkpoints.shard_of(cid), cid)):
            problems.append(f"checkpoint {cid} should have been purged but is on disk")
    for n in purge.get("versions", []):
        if versions.read(store, n).status != versions.PURGED:
            problems.append(f"model version {n} should be marked purged")
        if registered_version_exists(store, cfg, n):
            problems.append(f"MLflow still holds a registered version for purged model version {n}")
    return problems


def replay(store: Store, cfg: SisaConfig, shards: dict[int, str], only: list[int] | None) -> dict[int, dict[str, Any]]:
    """Retrain shards from scratch into a scratch folder and compare with the serving adapters."""
    scratch = tempfile.mkdtemp(
        prefix="sisa-replay-", dir=store.fs.local_path(layout.TMP) if store.fs.is_local and _ensure(store) else None
    )
    try:
        targets = {s: c for s, c in shards.items() if only is None or s in only}
        tasks = [
            ShardTask(store.uri, cfg.to_dict(), s, tuple(range(checkpoints.slice_of(c) + 1)), None, replay_dir=scratch)
            for s, c in sorted(targets.items())
        ]
        scheduler.run_shard_jobs(train_shard, tasks, cfg.scheduler, desc="replay shards")
        out = {}
        for s, cid in sorted(targets.items()):
            with checkpoints.open_checkpoint(store, cid) as ckpt:
                serving_t = checkpoints.load_adapter_tensors(ckpt)
            replay_t = load_file(os.path.join(scratch, f"shard={s:05d}", checkpoints.ADAPTER_WEIGHTS))
            same_keys = set(serving_t) == set(replay_t)
            equal = same_keys and all(torch.equal(serving_t[k], replay_t[k]) for k in serving_t)
            out[s] = {"checkpoint_id": cid, "tensors": len(serving_t), "identical": equal}
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _ensure(store: Store) -> bool:
    store.fs.make_dir(layout.TMP)
    return True


def verify_store(store: Store, cfg: SisaConfig, request_id: str | None = None, replay_shards: bool = False) -> dict:
    """The report of steps 1-4 (the caller holds the store's job lock); `passed` is True when
    every check passed."""
    current = versions.current(store)
    shards = versions.shard_checkpoints(current)
    reqs = (
        [requests_ledger.read_request(store, request_id)]
        if request_id
        else [r for r in requests_ledger.all_requests(store) if r.status == RequestStatus.COMPLETED]
    )
    report: dict[str, Any] = {
        "serving_version": current.model_version if current else None,
        "requests": [r.request_id for r in reqs],
        "integrity": check_integrity(store, shards),
    }
    hashes = set().union(*[set(r.id_hashes) for r in reqs]) if reqs else set()
    report["lineage_violations"] = lineage_check.lineage_violations(store, shards, hashes)
    report["purge_problems"] = [p for r in reqs for p in check_purge(store, cfg, r)]
    if replay_shards:
        only = sorted({s for r in reqs if r.plan for s in r.plan.shard_ids}) if request_id else None
        report["replay"] = {str(k): v for k, v in replay(store, cfg, shards, only).items()}
    report["passed"] = (
        not report["integrity"]
        and not report["lineage_violations"]
        and not report["purge_problems"]
        and all(v["identical"] for v in report.get("replay", {}).values())
    )
    return report
