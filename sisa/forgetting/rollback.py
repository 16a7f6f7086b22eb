"""Rollback: serve an earlier model version, unless that would bring deleted data back.

Refused when the version is purged (a deletion destroyed one of its checkpoints), when any of its
checkpoints' lineage holds a record of a completed or open deletion request (the error names the
request; one awaiting approval or rejected forgets nothing), or when it is an approximate fast-path version.
"""

from __future__ import annotations

from dataclasses import dataclass

from sisa.config import SisaConfig
from sisa.forgetting import lineage_check
from sisa.lineage import requests_ledger, versions
from sisa.serving import mirror as registry
from sisa.storage import ledgers
from sisa.storage.errors import RefusedError
from sisa.storage.store import Store


@dataclass
class RollbackResult:
    previous: int | None
    current: int


def check_restorable(store: Store, model_version: int) -> versions.ModelVersion:
    target = versions.read(store, model_version)
    if target.status == versions.PURGED:
        raise RefusedError(
            f"model version {model_version} was purged by deletion request {target.purged_by}: "
            "it held a checkpoint trained on deleted records, which no longer exists. "
            "Pick a version that `sisa versions` lists as active."
        )
    lineages = lineage_check.version_lineages(store, target.shards)  # read once, checked against every request
    for req in requests_ledger.all_requests(store):
        if req.status in (requests_ledger.RequestStatus.AWAITING_APPROVAL, requests_ledger.RequestStatus.REJECTED):
            continue  # not (or not yet) to be forgotten: every version may hold its records
        bad = lineage_check.lineage_violations(store, target.shards, set(req.id_hashes), lineages)
        if bad:
            raise RefusedError(
                f"model version {model_version} cannot serve: checkpoint(s) {', '.join(bad)} were trained on "
                f"records deleted by request {req.request_id}"
            )
    if target.approximate:
        raise RefusedError(
            f"model version {model_version} is an approximate fast-path version; its exact successor replaced it"
        )
    return target


def roll_back(store: Store, cfg: SisaConfig, model_version: int) -> RollbackResult:
    """Move the serving pointer (one atomic write); the MLflow alias follows. Caller holds the lock."""
    check_restorable(store, model_version)
    previous = store.current_version()
    ledgers.write_current(store.fs, model_version)
    registry.move_alias(store, cfg, model_version)
    return RollbackResult(previous, model_version)
