"""Ingest: validate a whole batch, add provenance, assign shards and slices, write it.

    batch = prepare_batch(store, source, cfg)        # raises ValidationError, writes nothing
    result = commit_batch(store, batch, cfg)         # parts, then index, then the ledger entry

The ingest ledger entry is written last: an ingest exists once its entry does, and parts of an
ingest without one are crash leftovers that readers ignore and `sisa gc` removes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sisa.config import SisaConfig
from sisa.data import formats
from sisa.data.opening import open_store
from sisa.data.sharding import assign_shards, assign_slices
from sisa.data.sources import Source
from sisa.lineage import checkpoints
from sisa.lineage.requests_ledger import (
    forgotten_hashes,
    forgotten_selector_hashes,
    refuse_unfinished,
    selector_hashes,
)
from sisa.storage import ledgers, records
from sisa.storage.errors import ValidationError, list_some
from sisa.storage.faults import maybe_die
from sisa.storage.fs import StoreFS
from sisa.storage.index import RecordIndex
from sisa.storage.layout import index_part
from sisa.storage.schemas import INDEX_SCHEMA, LIVE, RECORD_COLUMNS
from sisa.storage.store import Store

MAX_ID_LENGTH = 512


@dataclass
class Batch:
    """A validated batch: new records only, ready to write."""

    source: Source
    source_name: str
    table: pa.Table  # normalised: record_id, text, subject_id + the user's columns
    skipped: int = 0  # records already in the store with identical content
    problems: list[str] = field(default_factory=list)


@dataclass
class IngestResult:
    ingest_id: str | None
    source: str
    records: int
    skipped: int
    shards: dict[int, int]
    slices: dict[str, int]
    noop: bool
    record_format: str | None = None  # text | prompt-completion | chat

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _string_column(
    source: Source, table: pa.Table, field_name: str, role: str, problems: list[str], required: bool
) -> pa.ChunkedArray | None:
    if field_name not in table.column_names:
        if required:
            problems.append(
                f"{source.name}: no `{field_name}` column for the {role} (columns: "
                f"{', '.join(table.column_names)}); set --{role.replace('_', '-')}-field"
            )
        return None
    # Kept in the reader's chunks: combining them would copy the whole text column, and the
    # source table stays alive beside it for error positions.
    col = table[field_name]
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col.cast(pa.string())
    if pa.types.is_integer(t) and role != "text":  # integer ids are common; integer text is a mistake
        return pc.cast(col, pa.string())
    if pa.types.is_null(t):
        return pa.chunked_array([pa.nulls(len(col), pa.string())])
    problems.append(f"{source.name}: column `{field_name}` ({role}) should hold strings, got {t}")
    return None


def _rows(source: Source, mask: pa.Array) -> list[str]:
    idx = np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))
    return source.where(idx)


def normalise(source: Source, cfg: SisaConfig) -> tuple[pa.Table, list[str]]:
    """Map the user's fields to record_id/text/subject_id and check every row; returns problems."""
    ic = cfg.ingest
    table = source.table
    problems: list[str] = []
    if table.num_rows == 0:
        return table, [f"{source.name}: no records"]
    record_format, problem = formats.detect_format(table.column_names, ic.text_field, ic.format)
    if problem:
        return table, [f"{source.name}: {problem}"]
    ids = _string_column(source, table, ic.id_field, "id", problems, True)
    if record_format == formats.TEXT:
        text = _string_column(source, table, ic.text_field, "text", problems, True)
        consumed = {ic.text_field}
    else:
        text, consumed = structured_text(source, table, record_format, ic.text_field, problems)
    subject = _string_column(source, table, ic.subject_field, "subject", problems, False)
    if ids is None or text is None:
        return table, problems
    bad = _blank(ids)
    if pc.any(bad).as_py():
        rows = _rows(source, bad)
        problems.append(
            f"{source.name}: missing or empty `{ic.id_field}` at {len(rows)} {source.unit}(s): {list_some(rows)}"
        )
    long = pc.greater(pc.utf8_length(pc.fill_null(ids, "")), MAX_ID_LENGTH)
    if pc.any(long).as_py():
        rows = _rows(source, long)
        problems.append(f"{source.name}: `{ic.id_field}` longer than {MAX_ID_LENGTH} characters at {list_some(rows)}")
    bad_text = _blank(text)
    if record_format == formats.TEXT and pc.any(bad_text).as_py():
        rows = _rows(source, bad_text)
        problems.append(
            f"{source.name}: missing or empty `{ic.text_field}` at {len(rows)} {source.unit}(s): {list_some(rows)}"
        )
    counts = pc.value_counts(ids.filter(pc.invert(bad)))  # empty ids are reported above, not as duplicates
    dup = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(dup):
        problems.append(f"{source.name}: {len(dup)} duplicate id(s) within the file: {list_some(dup.to_pylist())}")
    if subject is not None:
        subject = pc.if_else(_blank(subject), pa.scalar(None, pa.string()), subject)
    else:
        subject = pa.nulls(len(ids), pa.string())
    reserved = set(RECORD_COLUMNS) | {ic.id_field, ic.subject_field} | consumed
    extra = [c for c in table.column_names if c not in reserved]
    clash = [c for c in table.column_names if c in set(RECORD_COLUMNS) - {"record_id", "text", "subject_id"} - consumed]
    if clash:
        problems.append(f"{source.name}: columns {clash} are provenance columns sisa writes itself; rename them")
    kinds = pa.repeat(pa.scalar(record_format, pa.string()), len(ids))
    out = pa.table(
        {
            "record_id": ids,
            "text": text,
            "subject_id": subject,
            formats.FORMAT_COLUMN: kinds,
            **{c: table[c] for c in extra},
        }
    )
    return out, problems


def structured_text(
    source: Source, table: pa.Table, record_format: str, text_field: str, problems: list[str]
) -> tuple[pa.ChunkedArray | None, set[str]]:
    """The canonical stored text of prompt-completion or chat rows (see sisa/data/formats.py), after
    every row is checked; problems name the rows by kind, never their content."""
    if record_format == formats.CHAT:
        consumed = {formats.MESSAGES_FIELD}
        needed = [formats.MESSAGES_FIELD]
    else:
        consumed = {formats.PROMPT_FIELD, formats.COMPLETION_FIELD}
        needed = [formats.PROMPT_FIELD, formats.COMPLETION_FIELD]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        problems.append(
            f"{source.name}: {record_format} records need column(s) {', '.join(f'`{c}`' for c in missing)} "
            f"(columns: {', '.join(table.column_names)})"
        )
        return None, consumed
    if text_field in table.column_names:
        problems.append(
            f"{source.name}: a `{text_field}` column beside {record_format} columns; drop or rename it (a "
            "record is trained from one of them)"
        )
        return None, consumed
    by_kind: dict[str, list[int]] = {}
    out: list[str | None] = []
    if record_format == formats.CHAT:
        for row, value in enumerate(table[formats.MESSAGES_FIELD].to_pylist()):
            problem = formats.chat_problem(value)
            if problem:
                by_kind.setdefault(problem, []).append(row)
            out.append(None if problem else formats.encode_chat(value))
    else:
        pairs = zip(table[formats.PROMPT_FIELD].to_pylist(), table[formats.COMPLETION_FIELD].to_pylist(), strict=True)
        for row, (prompt, completion) in enumerate(pairs):
            problem = formats.pair_problem(prompt, completion)
            if problem:
                by_kind.setdefault(problem, []).append(row)
            out.append(None if problem else formats.encode_pair(prompt, completion))
    for problem, rows in by_kind.items():
        where = source.where(rows)
        problems.append(f"{source.name}: {len(where)} {record_format} record(s) at {list_some(where)}: {problem}")
    return pa.chunked_array([pa.array(out, pa.string())]), consumed


def _blank(col: pa.Array) -> pa.Array:
    """Null, empty or only whitespace; never null itself.

    `utf8_is_space` tests in place; trimming would copy every string (all the text: seconds per 1M).
    """
    empty = pc.or_kleene(pc.equal(pc.binary_length(col), 0), pc.utf8_is_space(col))
    return pc.or_kleene(pc.is_null(col), empty)


HASH_BLOCK = 1 << 16


def content_sha256(texts: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Hex sha256 of each text. A block of rows at a time: the Python bytes objects that hashlib
    needs exist for one block, not for the whole column at once."""
    # Binary values come out as bytes: no str objects, no .encode() per row.
    sha = hashlib.sha256
    chunks = texts.chunks if isinstance(texts, pa.ChunkedArray) else [texts]
    out = [
        pa.array(
            [sha(b).hexdigest() for b in chunk.slice(start, HASH_BLOCK).cast(pa.binary()).to_pylist()], pa.string()
        )
        for chunk in chunks
        for start in range(0, len(chunk), HASH_BLOCK)
    ]
    return pa.chunked_array(out, pa.string())


def prepare_batches(store: Store | None, sources: list[Source], cfg: SisaConfig) -> list[Batch]:
    """Validate every source, across sources and against the store; raise once with every problem.

    `store=None` validates for a store that does not exist yet (no records to clash with).
    """
    index = store.index if store is not None else RecordIndex()
    problems: list[str] = []
    batches = []
    for source in sources:
        table, probs = normalise(source, cfg)
        problems.extend(probs)
        batches.append(Batch(source, cfg.ingest.source or source.name, table))
    if problems:
        raise ValidationError("nothing was ingested:\n" + "\n".join(f"  - {p}" for p in problems))
    # Duplicates across the files of one call.
    seen: dict[str, str] = {}
    cross = []
    for b in batches:
        for rid in b.table["record_id"].to_pylist() if len(batches) > 1 else []:
            if rid in seen and seen[rid] != b.source.name:
                cross.append(f"{rid} ({seen[rid]} and {b.source.name})")
            seen.setdefault(rid, b.source.name)
    if cross:
        problems.append(f"{len(cross)} id(s) appear in more than one input: {list_some(cross)}")
    # Against the store: the same id with the same text is a re-ingest (skipped); other text is a conflict.
    for b in batches:
        b.table = b.table.append_column("content_sha256", content_sha256(b.table["text"]))
        found, _ = index.lookup(b.table["record_id"])
        if found.num_rows == 0:
            continue
        joined = b.table.select(["record_id", "content_sha256"]).join(
            found.select(["record_id", "content_sha256"]), "record_id", right_suffix="_stored"
        )
        differs = pc.not_equal(joined["content_sha256"], joined["content_sha256_stored"])
        conflicting = joined.filter(differs)["record_id"].to_pylist()
        if conflicting:
            problems.append(
                f"{b.source.name}: {len(conflicting)} id(s) already in the store with different text: "
                f"{list_some(conflicting)}; forget them first or give new ids"
            )
        already = pc.is_in(b.table["record_id"], value_set=found["record_id"])
        b.skipped = int(pc.sum(already.cast(pa.int64())).as_py() or 0)
        b.table = b.table.filter(pc.invert(already))
    if store is not None and not cfg.ingest.allow_forgotten:
        problems.extend(_forgotten_problems(store, batches))
    if problems:
        raise ValidationError("nothing was ingested:\n" + "\n".join(f"  - {p}" for p in problems))
    return batches


def _forgotten_problems(store: Store, batches: list[Batch]) -> list[str]:
    """Records or subjects a completed deletion request removed must not come back unnoticed
    (a re-import from an old export or backup would undo the deletion)."""
    ids_gone = forgotten_hashes(store, include_open=False)
    subjects_gone = forgotten_selector_hashes(store)
    if not ids_gone and not subjects_gone:
        return []
    out = []
    for b in batches:
        ids = b.table["record_id"].to_pylist()
        back = [r for r, h in zip(ids, store.hash_ids(ids), strict=True) if h in ids_gone]
        subjects = sorted({s for s in b.table["subject_id"].to_pylist() if s})
        back_subjects = [
            s for s, h in zip(subjects, selector_hashes(store, "subject", subjects), strict=True) if h in subjects_gone
        ]
        if back:
            out.append(
                f"{b.source.name}: {len(back)} record id(s) were forgotten by a deletion request: {list_some(back)}"
            )
        if back_subjects:
            out.append(
                f"{b.source.name}: {len(back_subjects)} subject(s) were forgotten by a deletion request: "
                f"{list_some(back_subjects)}"
            )
    if out:
        out.append(
            "re-ingesting them would undo the deletion; remove them from the input, or set "
            "ingest.allow_forgotten=true if they consented again"
        )
    return out


def _open_slices(store: Store, slice_size: int) -> dict[int, tuple[int, int]]:
    """Per shard: (slice to fill, records already in it). A sealed or full slice is never filled."""
    filled = {(r["shard_id"], r["slice_idx"]): r["records"] for r in store.index.counts().to_pylist()}
    sealed = checkpoints.sealed_slices(store)
    out = {}
    for shard in range(store.num_shards):
        last = max([sl for (sh, sl) in filled if sh == shard] + checkpoints.shard_slices(store, shard), default=-1)
        n = filled.get((shard, last), 0)
        if last >= 0 and last > sealed.get(shard, -1) and n < slice_size:
            out[shard] = (last, n)
        else:
            out[shard] = (max(last, sealed.get(shard, -1)) + 1, 0)
    return out


def commit_batch(store: Store, batch: Batch, cfg: SisaConfig, seq: int) -> IngestResult:
    """Write one validated batch as one ingest. The caller holds the store lock."""
    table = batch.table
    if table.num_rows == 0:
        return IngestResult(None, batch.source_name, 0, batch.skipped, {}, {}, True)
    shard_ids = assign_shards(store.seed, table["record_id"], table["subject_id"], store.num_shards)
    slice_idx = assign_slices(shard_ids, _open_slices(store, cfg.sharding.slice_size), cfg.sharding.slice_size)
    ingest_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    now = pa.scalar(datetime.now(UTC), pa.timestamp("ms", tz="UTC"))
    n = table.num_rows
    extra = [
        c
        for c in table.column_names
        if c not in ("record_id", "text", "subject_id", "content_sha256", formats.FORMAT_COLUMN)
    ]
    full = pa.table(
        {
            "record_id": table["record_id"],
            "text": table["text"],
            "subject_id": table["subject_id"],
            "shard_id": pa.array(shard_ids, pa.int32()),
            "slice_idx": pa.array(slice_idx, pa.int32()),
            "source": pa.repeat(pa.scalar(batch.source_name, pa.string()), n),
            "ingest_id": pa.repeat(pa.scalar(ingest_id, pa.string()), n),
            "ingested_at": pa.repeat(now, n),
            "content_sha256": table["content_sha256"],
            formats.FORMAT_COLUMN: table[formats.FORMAT_COLUMN],
            **{c: table[c] for c in extra},
        }
    )
    # Group rows by (shard, slice) with one stable sort (arrival order within a group), then write
    # a part per group. Arrow's take, Parquet encoding and fsync release the GIL: a few threads
    # write parts side by side.
    key = shard_ids.astype(np.int64) * (1 << 31) + slice_idx.astype(np.int64)
    order = np.argsort(key, kind="stable")
    skey = key[order]
    bounds = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1], True])
    groups = [
        (int(shard_ids[order[a]]), int(slice_idx[order[a]]), int(a), int(b))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]

    take = _ChunkwiseTake(full)

    def write(group: tuple[int, int, int, int]) -> None:
        shard, sl, a, b = group
        records.write_part(store.fs, shard, sl, seq, ingest_id, take(order[a:b]))

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(write, groups))
    maybe_die("ingest-after-parts")
    shards: dict[int, int] = {}
    slices: dict[str, int] = {}
    for shard, sl, a, b in groups:
        shards[shard] = shards.get(shard, 0) + (b - a)
        slices[f"{shard}/{sl}"] = b - a
    index = full.select(["record_id", "subject_id", "shard_id", "slice_idx", "source", "ingest_id", "content_sha256"])
    index = index.append_column("status", pa.repeat(pa.scalar(LIVE, pa.string()), n)).select(INDEX_SCHEMA.names)
    store.fs.write_parquet(index_part(seq, ingest_id), index)
    entry = {
        "seq": seq,
        "ingest_id": ingest_id,
        "source": batch.source_name,
        "input_sha256": batch.source.sha256,
        "ingested_at": now.as_py().isoformat(),
        "records": n,
        "skipped": batch.skipped,
        "shards": {str(k): v for k, v in sorted(shards.items())},
        "extra_columns": extra,
    }
    record_format = table[formats.FORMAT_COLUMN][0].as_py()
    entry["record_format"] = record_format
    ledgers.write_ingest(store.fs, entry)
    return IngestResult(ingest_id, batch.source_name, n, batch.skipped, shards, slices, False, record_format)


def ingest_sources(cfg: SisaConfig, sources: list[Source]) -> list[IngestResult]:
    """Validate every source, then (under the store lock) write one ingest per source.

    Everything is validated before anything is written, even before a new store is created: a
    rejected first ingest leaves nothing behind."""
    batches = prepare_batches(None, sources, cfg) if not Store.exists(cfg.store.uri) else None
    store = open_store(cfg, create=True)
    with store.lock("ingest", cfg.store.lock_timeout_s):
        # Queued requests do not hold ingest up (their records are marked; batches run later);
        # a request in flight (a crash mid-way) must finish first.
        refuse_unfinished(store, "ingest")
        if batches is None or len(store.index):  # an existing store, or another writer got in first
            batches = prepare_batches(store, sources, cfg)
        return [commit_batch(store, batch, cfg, next_seq(store.fs)) for batch in batches]


class _ChunkwiseTake:
    """`table.take(rows)` for ascending rows, one chunk at a time.

    The columns keep the reader's blocks (hundreds of chunks for a large file); Arrow's take on
    a chunked column concatenates all of its chunks first, which per (shard, slice) group would
    copy the whole text column again and again. Taking from each chunk the rows that fall in it
    copies only the rows taken.
    """

    def __init__(self, table: pa.Table):
        self.table = table
        self.starts = [np.cumsum([0] + [len(c) for c in col.chunks]) for col in table.columns]

    def __call__(self, rows: np.ndarray) -> pa.Table:
        columns = []
        for col, starts in zip(self.table.columns, self.starts, strict=True):
            cut = np.searchsorted(rows, starts)
            pieces = [
                chunk.take(pa.array(rows[a:b] - start))
                for chunk, start, a, b in zip(col.chunks, starts[:-1], cut[:-1], cut[1:], strict=True)
                if b > a
            ]
            columns.append(pa.chunked_array(pieces, col.type))
        return pa.Table.from_arrays(columns, schema=self.table.schema)


def next_seq(fs: StoreFS) -> int:
    return max((e["seq"] for e in ledgers.list_ingests(fs)), default=0) + 1
