"""Lineage checks: which checkpoints of a version hold (in their full lineage) a record a request
forgot. The certificate, rollback, `sisa verify` and the audit page ask them."""

from __future__ import annotations

import pyarrow as pa

from sisa.lineage import checkpoints
from sisa.storage.errors import StoreError
from sisa.storage.store import Store


def version_lineages(store: Store, shards: dict[int, str]) -> dict[str, set[str] | None]:
    """checkpoint_id → keyed hashes of every record in its lineage; None when the checkpoint or
    an ancestor is missing or damaged (purged, or unreadable: tainted by definition)."""
    out: dict[str, set[str] | None] = {}
    for _, cid in sorted(shards.items()):
        try:
            out[cid] = checkpoints.full_lineage(store, cid)
        except (StoreError, OSError, pa.ArrowException):
            out[cid] = None
    return out


def lineage_violations(
    store: Store, shards: dict[int, str], hashes: set[str], lineages: dict[str, set[str] | None] | None = None
) -> list[str]:
    """Checkpoints of a version whose full lineage holds one of `hashes` (or is unreadable)."""
    lineages = version_lineages(store, shards) if lineages is None else lineages
    return [cid for cid, held in lineages.items() if held is None or held & hashes]
