"""Model versions: a numbered set {shard_id → checkpoint_id} plus how they are aggregated.

A version entry is created once and becomes current by one atomic pointer write. Afterwards only
two things about it ever change, each by an atomic rewrite of its one file: its `status` moves
from `active` to `purged` (a deletion destroyed one of its checkpoints; a purged version can
never serve again), and it gains its MLflow reference (`mlflow`) once it is tracked. The set of
checkpoints, the aggregation and the reason never change.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from sisa.lineage.entries import entry_to_dict, split_known
from sisa.storage import ledgers
from sisa.storage.errors import StoreError
from sisa.storage.faults import maybe_die
from sisa.storage.store import Store, now_iso

SCHEMA_VERSION = 1


class VersionStatus(enum.StrEnum):
    ACTIVE = "active"
    PURGED = "purged"


ACTIVE = VersionStatus.ACTIVE
PURGED = VersionStatus.PURGED


@dataclass
class ModelVersion:
    model_version: int
    shards: dict[int, str]  # shard_id → checkpoint_id
    reason: str
    created_at: str
    training_fingerprint: str
    base_model: str
    aggregation: str = "uniform"
    parent: int | None = None
    status: VersionStatus = VersionStatus.ACTIVE
    approximate: bool = False
    excluded_shards: list[int] = field(default_factory=list)
    request_id: str | None = None
    request_ids: list[str] = field(default_factory=list)  # a batch commits one version for many
    purged_by: str | None = None
    mlflow: dict[str, str] | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys a newer sisa wrote, kept as they are

    def to_dict(self) -> dict[str, Any]:
        return entry_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelVersion:
        kwargs, extra = split_known(cls, d)
        kwargs["shards"] = {int(k): v for k, v in d["shards"].items()}
        kwargs["status"] = VersionStatus(d.get("status", "active"))
        # Version 1 of sisa wrote "ensemble" for the uniform token-level mean.
        if kwargs.get("aggregation") == "ensemble":
            kwargs["aggregation"] = "uniform"
        kwargs.setdefault("training_fingerprint", "")
        kwargs.setdefault("base_model", "")
        return cls(**kwargs, extra=extra)


def read(store: Store, model_version: int) -> ModelVersion:
    return ModelVersion.from_dict(ledgers.read_version(store.fs, model_version))


def current(store: Store) -> ModelVersion | None:
    n = ledgers.read_current(store.fs)
    return None if n is None else read(store, n)


def shard_checkpoints(version: ModelVersion | None) -> dict[int, str]:
    return {} if version is None else dict(version.shards)


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
    aggregation: str = "posterior",
    request_ids: list[str] | None = None,
    allow_empty: bool = False,
) -> ModelVersion:
    """Write a new version entry, then (by default) move the current pointer to it. A version
    of no shard (`allow_empty`: relief when every shard held the records from slice 0) serves
    the base model alone."""
    if not shards and not allow_empty:
        raise StoreError("no shard has a checkpoint: ingest records and train first")
    entry = ModelVersion(
        model_version=ledgers.next_version_number(store.fs),
        shards=dict(shards),
        reason=reason,
        created_at=now_iso(),
        training_fingerprint=training_fingerprint,
        base_model=base_model,
        aggregation=aggregation,
        parent=ledgers.read_current(store.fs),
        approximate=approximate,
        excluded_shards=sorted(excluded_shards or []),
        request_id=request_id,
        request_ids=list(request_ids or ([request_id] if request_id else [])),
    )
    ledgers.write_version(store.fs, entry.to_dict(), new=True)
    maybe_die("pointer-move")
    if make_current:
        ledgers.write_current(store.fs, entry.model_version)
    return entry


def mark_purged(store: Store, entry: ModelVersion, request_id: str) -> None:
    entry.status = VersionStatus.PURGED
    entry.purged_by = request_id
    ledgers.write_version(store.fs, entry.to_dict(), new=False)


def record_tracking(store: Store, entry: ModelVersion, mlflow: dict[str, str]) -> None:
    entry.mlflow = mlflow
    ledgers.write_version(store.fs, entry.to_dict(), new=False)


def all_versions(store: Store) -> list[ModelVersion]:
    return sorted((ModelVersion.from_dict(d) for d in ledgers.list_versions(store.fs)), key=lambda v: v.model_version)
