"""A store: one root holding records, the index, ledgers, checkpoints and versions.

`Store` ties the pieces of `storage/` together and is what `sisa/` and `pipelines/` use.
It speaks Arrow tables, ids and relative paths; it knows nothing of torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sisa.storage import layout, ledgers, records
from sisa.storage.errors import StoreError
from sisa.storage.fs import StoreFS
from sisa.storage.index import RecordIndex
from sisa.storage.keys import create_key, keyed_hash, keyed_hashes, load_key
from sisa.storage.lock import StoreLock
from sisa.storage.schemas import FORMAT_VERSION, INDEX_SCHEMA, LIVE


class Store:
    def __init__(self, fs: StoreFS, meta: dict[str, Any], key: bytes):
        self.fs = fs
        self.meta = meta
        self.key = key
        self._index_cache: tuple[tuple, RecordIndex] | None = None

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, uri: str, num_shards: int, seed: int) -> Store:
        fs = StoreFS(uri)
        if fs.exists(layout.STORE_META):
            raise StoreError(f"a store already exists at {uri}")
        fs.make_dir("")
        key = create_key(fs)
        meta = {
            "format_version": FORMAT_VERSION,
            "num_shards": num_shards,
            "seed": seed,
            "created_at": now_iso(),
        }
        # store.json last: a store exists once its metadata does.
        fs.write_json(layout.STORE_META, meta)
        return cls(fs, meta, key)

    @classmethod
    def open(cls, uri: str) -> Store:
        fs = StoreFS(uri)
        if not fs.exists(layout.STORE_META):
            raise StoreError(f"no store at {uri}: run `sisa ingest FILE --config C store.uri={uri}` to create one")
        meta = fs.read_json(layout.STORE_META)
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise StoreError(
                f"the store at {uri} has format {meta['format_version']}; this sisa reads up to "
                f"{FORMAT_VERSION}: upgrade sisa"
            )
        return cls(fs, meta, load_key(fs))

    @classmethod
    def exists(cls, uri: str) -> bool:
        return StoreFS(uri).exists(layout.STORE_META)

    @property
    def uri(self) -> str:
        return self.fs.uri

    @property
    def num_shards(self) -> int:
        return int(self.meta["num_shards"])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    def lock(self, purpose: str, timeout_s: float = 30.0) -> StoreLock:
        """The writer lock: held for every write of metadata (storage/lock.py)."""
        return StoreLock(self.fs, timeout_s, purpose)

    def jobs_lock(self, purpose: str, timeout_s: float = 30.0) -> StoreLock:
        """The jobs lock: long work (training, retrains, purges, verify) one at a time; taken
        before the writer lock."""
        return StoreLock(self.fs, timeout_s, purpose, layout.JOBS_LOCK)

    @contextmanager
    def job(self, purpose: str, timeout_s: float = 30.0) -> Iterator[StoreLock]:
        """Both locks, in order, for long work; yields the writer lock (a batch lets go of it
        while its shard jobs train)."""
        with self.jobs_lock(purpose, timeout_s), self.lock(purpose, timeout_s) as writer:
            yield writer

    # -- keyed hashes ----------------------------------------------------------------------------
    def hash_id(self, value: str) -> str:
        return keyed_hash(self.key, value)

    def hash_ids(self, values: list[str]) -> list[str]:
        return keyed_hashes(self.key, values)

    # -- ingests and records ---------------------------------------------------------------------
    def ingests(self) -> list[dict[str, Any]]:
        return ledgers.list_ingests(self.fs)

    @property
    def committed_ingests(self) -> set[str]:
        """Ingest ids with a ledger entry, read from the folder listing (never cached: another
        process may commit an ingest at any time)."""
        return {layout.ingest_id_of_entry(i.path) for i in self.fs.list(layout.INGESTS) if i.path.endswith(".json")}

    @property
    def index(self) -> RecordIndex:
        """The record index of the committed ingests. Always current: the parts are re-read
        whenever this process wrote to the store, or the listing (names, sizes, modification times)
        of the committed index parts changed (another process wrote) since the last read."""
        committed = self.committed_ingests
        infos = [
            i
            for i in self.fs.list(layout.INDEX)
            if i.path.endswith(".parquet") and records.ingest_of_part(i.path) in committed
        ]
        key = (self.fs.generation, tuple((i.path, i.size, i.mtime_ns) for i in infos))
        if self._index_cache is None or self._index_cache[0] != key:
            parts = [self.fs.read_parquet(self.fs.rel(i.path)) for i in infos]
            parts = [p.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA) for p in parts]
            self._index_cache = (key, RecordIndex(pa.concat_tables(parts) if parts else None))
        return self._index_cache[1]

    def index_parts(self) -> list[str]:
        committed = self.committed_ingests
        return [
            self.fs.rel(i.path)
            for i in self.fs.list(layout.INDEX)
            if i.path.endswith(".parquet") and records.ingest_of_part(i.path) in committed
        ]

    def record_slices(self, shard_id: int) -> list[int]:
        """Slices of the shard that hold committed records. A slice a checkpoint trained stays a
        slice after a deletion empties it: `sisa.lineage.checkpoints.shard_slices` adds those."""
        return records.list_slices(self.fs, shard_id, self.committed_ingests)

    def read_slice(
        self, shard_id: int, slice_idx: int, columns: list[str] | None = None, include_forgetting: bool = False
    ) -> pa.Table | None:
        """The slice's committed records in arrival order. Records a queued request holds (marked
        `forgetting` or `rectifying`) are left out unless asked for: no training path reads them
        (nor, for a rectification, their old text) again."""
        gone = None if include_forgetting else self.held_ids()
        wanted = (
            columns
            if gone is None or not len(gone) or columns is None or "record_id" in columns
            else [*columns, "record_id"]
        )
        table = records.read_slice(self.fs, shard_id, slice_idx, self.committed_ingests, wanted)
        if table is None or gone is None or not len(gone):
            return table
        table = table.filter(pc.invert(pc.is_in(table["record_id"], value_set=gone)))
        if columns is not None:
            table = table.select(columns)
        return table if table.num_rows else None

    def held_ids(self) -> pa.Array:
        """Ids of records a queued request holds: a deletion (`forgetting`) or a rectification
        (`rectifying`)."""
        table = self.index.table
        return table.filter(pc.not_equal(table["status"], LIVE))["record_id"].combine_chunks()

    def mark_records(self, record_ids: pa.Array, status: str) -> int:
        """Set the index status of these records (`live`, `forgetting` or `rectifying`); returns how many changed.
        Each index part holding one is rewritten atomically."""
        changed = 0
        for part in self.index_parts():
            table = self.fs.read_parquet(part)
            hit = pc.and_(pc.is_in(table["record_id"], value_set=record_ids), pc.not_equal(table["status"], status))
            n = pc.sum(hit).as_py() or 0
            if not n:
                continue
            table = table.set_column(
                table.schema.get_field_index("status"), "status", pc.if_else(hit, status, table["status"])
            )
            self.fs.write_parquet(part, table.cast(INDEX_SCHEMA))
            changed += n
        return changed

    def slice_parts(self, shard_id: int, slice_idx: int) -> list[str]:
        return records.list_parts(self.fs, shard_id, slice_idx, self.committed_ingests)

    # -- checkpoint folders (names and contents belong to sisa/lineage/checkpoints.py) -------------------
    def checkpoint_folders(self, shard_id: int) -> list[str]:
        """Names of the shard's checkpoint folders."""
        return [
            i.path.rsplit("/", 1)[-1]
            for i in self.fs.list(layout.checkpoints_of_shard(shard_id))
            if i.type.name == "Directory"
        ]

    # -- versions --------------------------------------------------------------------------------
    def current_version(self) -> int | None:
        return ledgers.read_current(self.fs)

    def size_bytes(self) -> int:
        return self.fs.size("")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
