"""Which records a request names: a selector (ids, subject, source, ingest id) resolved to live
index rows, what it names that is unknown or already forgotten, and the plan of forgetting them.

Nothing here changes the store; `sisa/forgetting/erasure.py` removes what a selection names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from sisa.config import SisaConfig
from sisa.forgetting.planner import plan_deletion
from sisa.lineage import checkpoints
from sisa.lineage.requests_ledger import (
    DeletionPlan,
    forgotten_hashes,
    forgotten_selector_hashes,
    selector_hashes,
)
from sisa.storage.errors import ValidationError, list_some
from sisa.storage.schemas import FORGETTING, LIVE, RECTIFYING
from sisa.storage.store import Store

SELECTORS = ("ids", "subject", "source", "ingest_id")


@dataclass
class Selection:
    kind: str
    values: list[str]
    rows: pa.Table  # index rows of the live records selected
    missing: list[str] = field(default_factory=list)  # ids/values that match nothing live
    already_deleted: list[str] = field(default_factory=list)  # of those, forgotten by an earlier request
    rectifying: list[str] = field(default_factory=list)  # record ids a queued rectification holds (not in rows)


def select_records(store: Store, kind: str, values: list[str]) -> Selection:
    """Resolve a selector to live index rows; unknown values are reported, not guessed."""
    values = [v.strip() for v in values if v and v.strip()]
    # Arguments that were not valid UTF-8 reach Python as lone surrogates (surrogateescape).
    undecodable = [ascii(v) for v in values if not _is_unicode(v)]
    if undecodable:
        raise ValidationError(
            f"{len(undecodable)} value(s) are not valid UTF-8 text: {list_some(undecodable)}; nothing was changed"
        )
    if kind not in SELECTORS:
        raise ValidationError(f"selector should be one of {', '.join(SELECTORS)}, got {kind!r}")
    if not values:
        raise ValidationError(
            "the deletion request selects nothing: give --ids, --ids-file, --subject, --source or --ingest-id"
        )
    values = list(dict.fromkeys(values))  # a repeated id in a request is deleted once
    index = store.index
    if kind == "ids":
        rows, missing_arr = index.lookup(pa.array(values, pa.string()))
        missing = missing_arr.to_pylist()
    else:
        column = {"subject": "subject_id", "source": "source", "ingest_id": "ingest_id"}[kind]
        rows = index.select(column, values)
        present = set(rows[column].to_pylist())
        missing = [v for v in values if v not in present]
    # Records a queued request is already forgetting are not selected again: the value counts as
    # already deleted (the queued request completes it), not as unknown. Records a queued
    # rectification holds stay live with new text: they are named apart, for the caller to refuse.
    pending = rows.filter(pc.equal(rows["status"], FORGETTING))
    held = rows.filter(pc.equal(rows["status"], RECTIFYING))
    rows = rows.filter(pc.equal(rows["status"], LIVE))
    sel = Selection(kind, values, rows, missing, rectifying=sorted(held["record_id"].to_pylist()))
    if pending.num_rows:
        column = (
            "record_id"
            if kind == "ids"
            else {"subject": "subject_id", "source": "source", "ingest_id": "ingest_id"}[kind]
        )
        live_values = set(rows[column].to_pylist())
        sel.already_deleted = sorted(set(pending[column].to_pylist()) - live_values)
    if missing:
        gone = forgotten_hashes(store) if kind == "ids" else forgotten_selector_hashes(store)
        hashes = store.hash_ids(missing) if kind == "ids" else selector_hashes(store, kind, missing)
        sel.already_deleted += [m for m, h in zip(missing, hashes, strict=True) if h in gone]
        sel.missing = [m for m, h in zip(missing, hashes, strict=True) if h not in gone]
    return sel


def plan_selection(store: Store, cfg: SisaConfig, sel: Selection, removes: bool = True) -> DeletionPlan:
    """The deletion plan of a selection: affected shards, earliest slices, retrain cost.
    `removes=False` (a rectification): the records stay in their slices, with new text."""
    rows = sel.rows
    hits = list(zip(rows["shard_id"].to_pylist(), rows["slice_idx"].to_pylist(), strict=True))
    # Records per slice after the deletion: the index's live counts (queued deletions' records
    # will not train again) minus the selected rows' (Arrow group-bys, no Python loop over the
    # index); emptied and checkpoint-only slices stay at 0.
    counts: dict[int, dict[int, int]] = {
        shard: dict.fromkeys(checkpoints.shard_slices(store, shard), 0) for shard in range(store.num_shards)
    }
    for r in store.index.counts(live_only=True).to_pylist():
        counts[r["shard_id"]][r["slice_idx"]] = r["records"]
    for shard, sl in hits if removes else []:
        counts[shard][sl] -= 1
    plan = plan_deletion(
        sel.kind,
        hits,
        counts,
        store.num_shards,
        cfg.training.epochs,
        cfg.sharding.slice_mode,
        batch_size=cfg.training.batch_size,
        min_steps=cfg.training.min_steps_per_slice,
        slice_size=cfg.sharding.slice_size,
    )
    plan.missing = len(sel.missing)
    plan.already_deleted = len(sel.already_deleted)
    return plan


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def find_live_by_hashes(store: Store, hashes: set[str]) -> pa.Table:
    """Index rows of live records whose keyed id hash is in `hashes` (resuming a request)."""
    ids = store.index.table["record_id"].to_pylist()
    mask = pa.array([h in hashes for h in store.hash_ids(ids)], pa.bool_())
    return store.index.table.filter(mask)


def describe_rectifying(sel: Selection) -> str:
    n = len(sel.rectifying)
    return f"{n} record(s) have a queued rectification: {list_some(sel.rectifying)}; run `sisa process` first"


def describe_missing(sel: Selection) -> str:
    what = {"ids": "record id", "subject": "subject", "source": "source", "ingest_id": "ingest id"}[sel.kind]
    return f"{len(sel.missing)} unknown {what}(s): {list_some(sel.missing)}"
