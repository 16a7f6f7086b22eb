"""What was trained on what, and what was asked to be forgotten: the typed ledgers.

`checkpoints` (one saved adapter state with its lineage: the keyed hashes of every record it
read), `versions` (which checkpoints serve together, and whether a version may serve again),
`requests_ledger` (deletion and rectification requests, their plans and statuses) and
`entries` (the JSON of those entries), `signing` (certificates signed with the store's Ed25519
key, and checked with its public key alone). Knows no torch; speaks Arrow, ids and hashes.
"""

from sisa.lineage import checkpoints, entries, requests_ledger, signing, versions
from sisa.lineage.requests_ledger import (
    Decision,
    DeletionPlan,
    DeletionRequest,
    RequestKind,
    RequestMode,
    RequestStatus,
    RequestVersions,
    VersionKind,
)
from sisa.lineage.versions import ModelVersion, VersionStatus

__all__ = [
    "Decision",
    "DeletionPlan",
    "DeletionRequest",
    "ModelVersion",
    "RequestKind",
    "RequestMode",
    "RequestStatus",
    "RequestVersions",
    "VersionKind",
    "VersionStatus",
    "checkpoints",
    "entries",
    "requests_ledger",
    "signing",
    "versions",
]
