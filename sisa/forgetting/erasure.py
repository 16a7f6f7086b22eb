"""Erasure: the old content leaves the data. A deletion's records are erased from their slice parts
and the index (the old files unlinked by the rename) and the ingests' counts follow; a
rectification's records have their text rewritten in place with the staged new text
(`sisa/forgetting/corrections.py`)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from sisa.forgetting import corrections
from sisa.forgetting.record_texts import row_slices
from sisa.lineage.requests_ledger import DeletionRequest, RequestKind
from sisa.storage import ledgers, records
from sisa.storage.schemas import INDEX_SCHEMA, LIVE
from sisa.storage.store import Store


def remove_data(store: Store, req: DeletionRequest, rows: pa.Table) -> int:
    """The old content leaves the data: a deletion erases the records; a rectification rewrites
    their text and content hash with the staged new text, drops the staged copy and gives the
    records back to training (`live`). Idempotent: a resumed call finds nothing left to change.
    Returns how many records changed."""
    if req.kind != RequestKind.RECTIFY:
        return erase_records(store, rows)
    changed = corrections.apply(store, req.request_id, rows)
    corrections.unstage(store, req.request_id)
    if rows.num_rows:
        store.mark_records(rows["record_id"].combine_chunks(), LIVE)
    return changed


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
    live = {
        r["ingest_id"]: r["n"]
        for r in store.index.table.group_by("ingest_id")
        .aggregate([("record_id", "count")])
        .rename_columns(["ingest_id", "n"])
        .to_pylist()
    }
    for entry in store.ingests():
        if entry["ingest_id"] in ingest_ids:
            entry.setdefault("records_ingested", entry["records"])
            entry["records"] = live.get(entry["ingest_id"], 0)
            ledgers.rewrite_ingest(store.fs, entry)
