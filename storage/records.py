"""Record data: one Parquet part per (shard, slice, ingest).

Slices are append-only: an ingest adds part files to a slice that no checkpoint has sealed yet,
or opens new slices. A slice is read as the concatenation of its committed parts in ingest order
(the part name starts with the ingest sequence number), so arrival order is stable across runs.
Parts whose ingest is not in the ingest ledger are uncommitted leftovers of a crash and are never
read; `sisa gc` removes them.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from sisa.storage import layout
from sisa.storage.fs import StoreFS
from sisa.storage.schemas import RECORD_SCHEMA


def ingest_of_part(part_path: str) -> str:
    name = part_path.rsplit("/", 1)[-1]
    return name[len("part-000000-") : -len(".parquet")]


def list_parts(fs: StoreFS, shard_id: int, slice_idx: int, committed: set[str]) -> list[str]:
    """Committed part paths of one slice, in ingest order."""
    infos = fs.list(layout.slice_dir(shard_id, slice_idx))
    return [fs.rel(i.path) for i in infos if i.path.endswith(".parquet") and ingest_of_part(i.path) in committed]


def list_slices(fs: StoreFS, shard_id: int, committed: set[str]) -> list[int]:
    """Slice numbers holding at least one committed part. A folder holding only a crashed
    ingest's parts is not a slice: nothing in it was ever ingested."""
    out = []
    for info in fs.list(layout.shard_dir(shard_id)):
        name = info.path.rsplit("/", 1)[-1]
        if name.startswith("slice=") and list_parts(fs, shard_id, int(name.split("=")[1]), committed):
            out.append(int(name.split("=")[1]))
    return sorted(out)


def read_slice(
    fs: StoreFS, shard_id: int, slice_idx: int, committed: set[str], columns: list[str] | None = None
) -> pa.Table | None:
    """All records of one slice in arrival order, or None when it holds none."""
    tables = [_read_part(fs, p, columns) for p in list_parts(fs, shard_id, slice_idx, committed)]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def _read_part(fs: StoreFS, rel: str, columns: list[str] | None) -> pa.Table:
    """A part's columns; one the part predates (a column added to RECORD_SCHEMA later, such as
    `record_format`) comes back as nulls."""
    try:
        return fs.read_parquet(rel, columns=columns)
    except pa.ArrowInvalid:
        if columns is None:
            raise
        table = fs.read_parquet(rel)
        missing = [c for c in columns if c not in table.column_names]
        if not missing or any(c not in RECORD_SCHEMA.names for c in missing):
            raise
        for c in missing:
            table = table.append_column(RECORD_SCHEMA.field(c), pa.nulls(table.num_rows, RECORD_SCHEMA.field(c).type))
        return table.select(columns)


def write_part(fs: StoreFS, shard_id: int, slice_idx: int, seq: int, ingest_id: str, table: pa.Table) -> str:
    rel = layout.slice_part(shard_id, slice_idx, seq, ingest_id)
    fs.write_parquet(rel, table)
    return rel


def rewrite_part_without(fs: StoreFS, part_rel: str, record_ids: pa.Array) -> int:
    """Rewrite one part without the given records; returns how many rows went.

    The new file replaces the old one by an atomic rename, so the old bytes are unlinked; an
    emptied part is deleted outright.
    """
    table = fs.read_parquet(part_rel)
    keep = pc.invert(pc.is_in(table["record_id"], value_set=record_ids))
    kept = table.filter(keep)
    removed = table.num_rows - kept.num_rows
    if removed == 0:
        return 0
    if kept.num_rows == 0:
        fs.delete(part_rel)
    else:
        fs.write_parquet(part_rel, kept)
    return removed


def replace_values(fs: StoreFS, part_rel: str, new: pa.Table, schema: pa.Schema | None = None) -> int:
    """Rewrite one part (slice or index) with the values of `new` (record_id + the columns to set)
    for the records it names; returns how many rows changed. Row order, ids and every other column
    stay; a column `new` brings that the part lacks is added (null elsewhere). The new file
    replaces the old by an atomic rename, so the old bytes are unlinked."""
    table = fs.read_parquet(part_rel)
    pos = pc.index_in(table["record_id"], value_set=new["record_id"])
    hit = pc.is_valid(pos)
    n = pc.sum(hit).as_py() or 0
    if not n:
        return 0
    for name in new.column_names:
        if name == "record_id":
            continue
        values = new[name].combine_chunks().take(pc.fill_null(pos, 0))
        old = table[name] if name in table.column_names else pa.nulls(table.num_rows, values.type)
        column = pc.if_else(hit, values, old.cast(values.type))
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, column)
        else:
            table = table.append_column(name, column)
    fs.write_parquet(part_rel, table.cast(schema) if schema is not None else table)
    return n
