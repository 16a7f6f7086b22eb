"""Model versions: a numbered set {shard_id → checkpoint_id} plus how they are aggregated.

A version is written once (append-only), then becomes current by one atomic pointer write.
Its `status` only ever moves from `active` to `purged` (a deletion destroyed one of its
checkpoints); a purged version can never serve again.
"""

from __future__ import annotations

from typing import Any

from storage import ledgers
from storage.errors import StoreError
from storage.faults import maybe_die
from storage.store import Store, now_iso

ACTIVE = "active"
PURGED = "purged"


def current(store: Store) -> dict[str, Any] | None:
    n = ledgers.read_current(store.fs)
    return None if n is None else ledgers.read_version(store.fs, n)


def shard_checkpoints(version: dict[str, Any] | None) -> dict[int, str]:
    if version is None:
        return {}
    return {int(k): v for k, v in version["shards"].items()}


def commit_version(
    store: Store,
    shards: dict[int, str],
    reason: str,
    training_fingerprint: str,
    base_model: str,
    approximate: bool = False,
    excluded_shards: list[int] | None = None,
    request_id: str | None = None,
    make_current: bool = True,
    extra: dict[str, Any] | None = None,
    aggregation: str = "posterior",
) -> dict[str, Any]:
    """Write a new version entry, then (by default) move the current pointer to it.

    `aggregation` records how the version is served (the config's `serving.aggregation`)."""
    if not shards:
        raise StoreError("no shard has a checkpoint: ingest records and train first")
    parent = ledgers.read_current(store.fs)
    entry = {
        "model_version": ledgers.next_version_number(store.fs),
        "shards": {str(k): shards[k] for k in sorted(shards)},
        "aggregation": aggregation,
        "reason": reason,
        "parent": parent,
        "created_at": now_iso(),
        "status": ACTIVE,
        "approximate": approximate,
        "excluded_shards": sorted(excluded_shards or []),
        "request_id": request_id,
        "training_fingerprint": training_fingerprint,
        "base_model": base_model,
        **(extra or {}),
    }
    ledgers.write_version(store.fs, entry, new=True)
    maybe_die("pointer-move")
    if make_current:
        ledgers.write_current(store.fs, entry["model_version"])
    return entry


def update_version(store: Store, entry: dict[str, Any]) -> None:
    ledgers.write_version(store.fs, entry, new=False)


def all_versions(store: Store) -> list[dict[str, Any]]:
    return sorted(ledgers.list_versions(store.fs), key=lambda v: v["model_version"])
