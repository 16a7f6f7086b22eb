"""The certificate of a completed deletion or rectification: what can be checked when it completes.

The serving version's lineage holds none of the deleted id hashes, every purged checkpoint is
gone from disk, and the checkpoints before and after are named with their adapters' sha256.
A rectification's certificate names the old and new content hashes (keyed; never the text) and
checks that the new content is in the serving lineage. The memorization evidence is measured
earlier, while the text is still in memory, and lives beside it in the request's ledger entry;
its numbers and sample sizes are copied in. The certificate also records the audit log's head, and
is signed as a whole (sisa/lineage/signing.py) by `phases.certify`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sisa.forgetting import lineage_check
from sisa.lineage import checkpoints, versions
from sisa.lineage.requests_ledger import DeletionRequest, RequestKind
from sisa.storage import layout
from sisa.storage.audit import AuditLog
from sisa.storage.store import Store


def make_certificate(store: Store, req: DeletionRequest) -> dict[str, Any]:
    """What can be checked now: the lineage of what serves, and that the purged files are gone."""
    current = versions.current(store)
    after_shards = versions.shard_checkpoints(current)
    violations = lineage_check.lineage_violations(store, after_shards, set(req.id_hashes))
    purged = (req.purge or {}).get("checkpoints", [])
    still_there = [c for c in purged if store.fs.exists(layout.checkpoint_dir(checkpoints.shard_of(c), c))]
    digest = hashlib.sha256(
        json.dumps(
            {
                "request_id": req.request_id,
                "selector": req.selector,
                "id_hashes": req.id_hashes,
                "received_at": req.received_at,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    out: dict[str, Any] = {
        "kind": req.kind.value,
        "request_id": req.request_id,
        "request_sha256": digest,
        "id_hash_count": len(req.id_hashes),
        "serving_version": current.model_version if current else None,
        "checkpoints_before": req.checkpoints_before,
        "checkpoints_after": [
            {"shard_id": s, "checkpoint_id": cid, "adapter_sha256": checkpoints.adapter_sha256(store, cid)}
            for s, cid in sorted(after_shards.items())
        ],
        "lineage_check": {"passed": not violations, "violations": violations},
        "purge_check": {"passed": not still_there, "remaining": still_there},
        # The trio, leak@k and membership inference per version, numbers and sample sizes only.
        "evidence": req.evidence.get("versions", {}),
        # The records' loss before and after (and a holdout's), with the sample sizes they rest on.
        "loss_evidence": {k: v for k, v in req.evidence.items() if k != "versions"} | {"records": req.records},
        # The audit log's last entry now: a later cut or rewrite of the log shows (`sisa audit verify`).
        "audit_head": AuditLog(store.fs).head(),
    }
    if req.kind == RequestKind.RECTIFY:
        # Keyed hashes of (record id, content): the old content is in no serving lineage (the
        # lineage check above), the new one is; the text itself is named nowhere.
        held = (
            set().union(*[h for h in lineage_check.version_lineages(store, after_shards).values() if h])
            if after_shards
            else set()
        )
        new = [c["new"] for c in req.rectified]
        out["rectification"] = {
            "records": len(req.rectified),
            "content_hashes": req.rectified,
            "new_content_check": {"passed": set(new) <= held, "missing": sorted(set(new) - held)},
        }
    out["governance"] = governance(req)
    return out


# -- governance (decision rules, four eyes) -----------------------------------------------------
def governance(req: DeletionRequest) -> dict[str, Any]:
    """Who decided and by which criteria: the policy rule and its fingerprint, the requester, their
    attestation of how the subject's identity was verified (free text, outside `request_sha256`),
    and each approval. Requests filed before policies existed carry None and []."""
    d = req.decision
    return {
        "rule": d.rule if d else None,
        "policy_fingerprint": d.policy_fingerprint if d else None,
        "method": d.method if d else None,
        "approvers_needed": d.approvers if d else 0,
        "requested_by": req.requested_by,
        "identity_verification": req.identity_verification,
        "approvals": list(req.approvals),
    }
