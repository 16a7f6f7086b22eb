"""The certificate of a completed deletion: what can be checked at the moment it completes.

The serving version's lineage holds none of the deleted id hashes, every purged checkpoint is
gone from disk, and the checkpoints before and after are named with their adapters' sha256. The
memorization evidence is measured earlier, while the text is still in memory, and lives beside
it in the request's ledger entry.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sisa import checkpoints, deletion, versions
from storage import layout
from storage.store import Store


def make_certificate(store: Store, req: dict, before_shards: dict[int, str]) -> dict[str, Any]:
    """What can be checked now: the lineage of what serves, and that the purged files are gone."""
    current = versions.current(store)
    after_shards = versions.shard_checkpoints(current)
    hashes = set(req["id_hashes"])

    def describe(shards: dict[int, str]) -> list[dict]:
        out = []
        for s, cid in sorted(shards.items()):
            man = checkpoints.read_manifest(store, s, cid)
            out.append({"shard_id": s, "checkpoint_id": cid, "adapter_sha256": man["files"]["adapter_model.safetensors"]})
        return out

    violations = deletion.lineage_violations(store, after_shards, hashes)
    still_there = [c for c in req["purge"]["checkpoints"] if store.fs.exists(layout.checkpoint_dir(checkpoints.shard_of(c), c))]
    digest = hashlib.sha256(json.dumps({k: req[k] for k in ("request_id", "selector", "id_hashes", "received_at")}, sort_keys=True).encode()).hexdigest()
    return {
        "request_sha256": digest,
        "serving_version": current["model_version"] if current else None,
        "checkpoints_before": req.get("checkpoints_before", [{"shard_id": s, "checkpoint_id": c} for s, c in sorted(before_shards.items())]),
        "checkpoints_after": describe(after_shards),
        "lineage_check": {"passed": not violations, "violations": violations},
        "purge_check": {"passed": not still_there, "remaining": still_there},
    }
