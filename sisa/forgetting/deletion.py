"""The mechanics of forgetting: select, erase, find tainted checkpoints, purge, check lineage.

`sisa/forgetting/flow.py` is the state machine that calls these steps. Everything that could hold a
deleted record's text is handled here: slice parts and index parts are rewritten without the
rows (the old files are unlinked by the rename), checkpoints whose lineage holds a deleted id are
deleted, versions holding them are marked purged, their MLflow runs are deleted and
garbage-collected, and the store's tmp/ and cache/ are emptied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sisa.config import SisaConfig
from sisa.data.formats import FORMAT_COLUMN, Item, decode
from sisa.forgetting.planner import plan_deletion, tainted_checkpoints
from sisa.lineage import checkpoints, versions
from sisa.lineage.requests_ledger import (
    DeletionPlan,
    forgotten_hashes,
    forgotten_selector_hashes,
    selector_hashes,
)
from sisa.serving import mirror as registry
from storage import layout, ledgers, records
from storage.errors import StoreError, ValidationError, list_some
from storage.faults import maybe_die
from storage.schemas import FORGETTING, INDEX_SCHEMA, LIVE, RECTIFYING
from storage.store import Store

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
        raise ValidationError(f"{len(undecodable)} value(s) are not valid UTF-8 text: {list_some(undecodable)}; nothing was changed")
    if kind not in SELECTORS:
        raise ValidationError(f"selector should be one of {', '.join(SELECTORS)}, got {kind!r}")
    if not values:
        raise ValidationError("the deletion request selects nothing: give --ids, --ids-file, --subject, --source or --ingest-id")
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
        column = "record_id" if kind == "ids" else {"subject": "subject_id", "source": "source", "ingest_id": "ingest_id"}[kind]
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
    counts: dict[int, dict[int, int]] = {shard: dict.fromkeys(checkpoints.shard_slices(store, shard), 0) for shard in range(store.num_shards)}
    for r in store.index.counts(live_only=True).to_pylist():
        counts[r["shard_id"]][r["slice_idx"]] = r["records"]
    for shard, sl in hits if removes else []:
        counts[shard][sl] -= 1
    plan = plan_deletion(sel.kind, hits, counts, store.num_shards, cfg.training.epochs, cfg.sharding.slice_mode, batch_size=cfg.training.batch_size, min_steps=cfg.training.min_steps_per_slice)
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


def row_slices(rows: pa.Table) -> list[tuple[int, int]]:
    """The (shard_id, slice_idx) of the slices that hold these index rows, in order."""
    return sorted({(int(a), int(b)) for a, b in zip(rows["shard_id"].to_pylist(), rows["slice_idx"].to_pylist(), strict=True)})


def erase_records(store: Store, rows: pa.Table) -> int:
    """Physically erase the records from their slice parts and the index, and bring the counts of
    the ingests they came from up to date. Idempotent (a resumed erase finds fewer rows)."""
    if rows.num_rows == 0:
        return 0
    ids = rows["record_id"].combine_chunks()
    removed = 0
    for shard_id, slice_idx in row_slices(rows):
        for part in store.slice_parts(shard_id, slice_idx):
            removed += records.rewrite_part_without(store.fs, part, ids)
    for part in store.index_parts():
        table = store.fs.read_parquet(part)
        keep = pc.invert(pc.is_in(table["record_id"], value_set=ids))
        if pc.all(keep).as_py():
            continue
        store.fs.write_parquet(part, table.filter(keep).cast(INDEX_SCHEMA))
    update_ingest_counts(store, set(rows["ingest_id"].to_pylist()))
    return removed


def update_ingest_counts(store: Store, ingest_ids: set[str]) -> None:
    """Set each ingest's `records` to its live records in the index (what `sisa status` shows);
    the count it was ingested with stays as `records_ingested`."""
    if not ingest_ids:
        return
    live = {r["ingest_id"]: r["n"] for r in store.index.table.group_by("ingest_id").aggregate([("record_id", "count")]).rename_columns(["ingest_id", "n"]).to_pylist()}
    for entry in store.ingests():
        if entry["ingest_id"] in ingest_ids:
            entry.setdefault("records_ingested", entry["records"])
            entry["records"] = live.get(entry["ingest_id"], 0)
            ledgers.rewrite_ingest(store.fs, entry)


def read_texts(store: Store, rows) -> tuple[list[Item], list[str | None] | None]:
    """The records (a text record's str, or a prompt-completion/chat Example) and their prompt
    column when the data has one, read into memory only. The prompts are not None when some
    record is scored on its answer tokens alone: a text record with a `prompt` column, or any
    prompt-completion or chat record (scored on its completion / assistant turns)."""
    texts: list[Item] = []
    prompts: list[str | None] = []
    has_prompt = False
    wanted = set(rows["record_id"].to_pylist())
    for shard, sl in row_slices(rows):
        t = store.read_slice(shard, sl, include_forgetting=True)
        if t is None:
            continue
        has_prompt = has_prompt or "prompt" in t.column_names
        ps = t["prompt"].to_pylist() if "prompt" in t.column_names else [None] * t.num_rows
        kinds = t[FORMAT_COLUMN].to_pylist() if FORMAT_COLUMN in t.column_names else [None] * t.num_rows
        for rid, text, p, kind in zip(t["record_id"].to_pylist(), t["text"].to_pylist(), ps, kinds, strict=True):
            if rid in wanted:
                item = decode(kind, text)
                has_prompt = has_prompt or not isinstance(item, str)
                texts.append(item)
                prompts.append(p if isinstance(item, str) else None)
    return texts, (prompts if has_prompt else None)


def retain_records(store: Store, shard_id: int, exclude: set[str], limit: int = 256) -> tuple[list[str], list[Item]]:
    """(record ids, records) of up to `limit` of the shard's remaining records, newest slices
    first (what the adapter learned last is what an unlearning step disturbs most); reads only
    the slices it needs. A record is a text record's str or a prompt-completion/chat Example."""
    ids: list[str] = []
    texts: list[Item] = []
    for sl in reversed(checkpoints.shard_slices(store, shard_id)):
        t = store.read_slice(shard_id, sl, columns=["record_id", "text", FORMAT_COLUMN])
        if t is None:
            continue
        for rid, text, kind in zip(t["record_id"].to_pylist(), t["text"].to_pylist(), t[FORMAT_COLUMN].to_pylist(), strict=True):
            if rid not in exclude:
                ids.append(rid)
                texts.append(decode(kind, text))
        if len(ids) >= limit:
            break
    return ids[:limit], texts[:limit]


# -- checkpoints and lineage -------------------------------------------------------------------
def tainted(store: Store, hashes: set[str], also: set[str] = frozenset()) -> set[str]:
    parents = checkpoints.parents(store)
    # A checkpoint whose parent is gone descends from a purged one: a purge cut short by a crash
    # may have deleted the parent (the checkpoint that held the records) but not its children,
    # whose own lineage files do not name the records. They are tainted all the same.
    orphans = {cid for cid, parent in parents.items() if parent is not None and parent not in parents}
    return tainted_checkpoints(parents, checkpoints.checkpoints_holding(store, hashes) | orphans | also)


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


def lineage_violations(store: Store, shards: dict[int, str], hashes: set[str], lineages: dict[str, set[str] | None] | None = None) -> list[str]:
    """Checkpoints of a version whose full lineage holds one of `hashes` (or is unreadable)."""
    lineages = version_lineages(store, shards) if lineages is None else lineages
    return [cid for cid, held in lineages.items() if held is None or held & hashes]


def purge(store: Store, cfg: SisaConfig, hashes: set[str], request_id: str, also: set[str] = frozenset()) -> dict[str, Any]:
    """Delete every tainted checkpoint (and `also` those, with their descendants), mark versions
    holding one purged, purge MLflow, clean caches."""
    dead = tainted(store, hashes, also)
    purged_versions = []
    for v in versions.all_versions(store):
        if v.status != versions.PURGED and set(v.shards.values()) & dead:
            versions.mark_purged(store, v, request_id)
            purged_versions.append(v.model_version)
    already = [v.model_version for v in versions.all_versions(store) if v.purged_by == request_id]
    registry.purge_versions(store, cfg, already)
    deleted = []
    for cid in sorted(dead):
        rel = layout.checkpoint_dir(checkpoints.shard_of(cid), cid)
        if store.fs.exists(rel):
            store.fs.delete(rel)
            deleted.append(cid)
            maybe_die("forget-during-purge")
    for rel in (layout.TMP, layout.CACHE):
        store.fs.delete(rel)
    return {"checkpoints": sorted(dead), "versions": sorted(already), "newly_purged_versions": purged_versions, "deleted_now": deleted}


def describe_rectifying(sel: Selection) -> str:
    return f"{len(sel.rectifying)} record(s) have a queued rectification: {list_some(sel.rectifying)}; run `sisa process` first"


def describe_missing(sel: Selection) -> str:
    what = {"ids": "record id", "subject": "subject", "source": "source", "ingest_id": "ingest id"}[sel.kind]
    return f"{len(sel.missing)} unknown {what}(s): {list_some(sel.missing)}"
