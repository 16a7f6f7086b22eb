"""A store: one root holding records, the index, ledgers, checkpoints and versions.

`Store` ties the pieces of `storage/` together and is what `sisa/` and `pipelines/` use.
It speaks Arrow tables, ids and relative paths; it knows nothing of torch.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import pyarrow as pa

from storage import layout, ledgers, records
from storage.errors import StoreError
from storage.fs import StoreFS
from storage.index import RecordIndex
from storage.keys import create_key, keyed_hash, keyed_hashes, load_key
from storage.lock import StoreLock
from storage.schemas import FORMAT_VERSION, INDEX_SCHEMA


class Store:
    def __init__(self, fs: StoreFS, meta: dict[str, Any], key: bytes):
        self.fs = fs
        self.meta = meta
        self.key = key

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
            raise StoreError(f"the store at {uri} has format {meta['format_version']}; this sisa reads up to {FORMAT_VERSION}: upgrade sisa")
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
        return StoreLock(self.fs, timeout_s, purpose)

    # -- keyed hashes ----------------------------------------------------------------------------
    def hash_id(self, value: str) -> str:
        return keyed_hash(self.key, value)

    def hash_ids(self, values: list[str]) -> list[str]:
        return keyed_hashes(self.key, values)

    # -- ingests and records ---------------------------------------------------------------------
    def ingests(self) -> list[dict[str, Any]]:
        return ledgers.list_ingests(self.fs)

    @cached_property
    def committed_ingests(self) -> set[str]:
        return {e["ingest_id"] for e in self.ingests()}

    def refresh(self) -> None:
        """Forget cached reads after this process changed the store."""
        self.__dict__.pop("committed_ingests", None)
        self.__dict__.pop("index", None)

    @cached_property
    def index(self) -> RecordIndex:
        committed = self.committed_ingests
        parts = [
            self.fs.read_parquet(self.fs.rel(i.path))
            for i in self.fs.list(layout.INDEX)
            if i.path.endswith(".parquet") and records._ingest_of(i.path) in committed
        ]
        parts = [p.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA) for p in parts]
        return RecordIndex(pa.concat_tables(parts) if parts else None)

    def index_parts(self) -> list[str]:
        committed = self.committed_ingests
        return [self.fs.rel(i.path) for i in self.fs.list(layout.INDEX) if i.path.endswith(".parquet") and records._ingest_of(i.path) in committed]

    def slices(self, shard_id: int) -> list[int]:
        """The shard's slices: those with committed records, and those a checkpoint trained
        (a slice emptied by a deletion stays a slice: its checkpoint exists and seals it)."""
        trained = {checkpoint_slice(c) for c in self.checkpoint_ids(shard_id)}
        return sorted(set(records.list_slices(self.fs, shard_id, self.committed_ingests)) | trained)

    def read_slice(self, shard_id: int, slice_idx: int, columns: list[str] | None = None) -> pa.Table | None:
        return records.read_slice(self.fs, shard_id, slice_idx, self.committed_ingests, columns)

    def slice_parts(self, shard_id: int, slice_idx: int) -> list[str]:
        return records.list_parts(self.fs, shard_id, slice_idx, self.committed_ingests)

    # -- checkpoints (bytes only; sisa/checkpoints.py writes and reads their contents) -----------
    def checkpoint_ids(self, shard_id: int) -> list[str]:
        base = f"{layout.CHECKPOINTS}/shard={shard_id:05d}"
        return [i.path.rsplit("/", 1)[-1] for i in self.fs.list(base) if i.type.name == "Directory"]

    def sealed_slices(self) -> dict[int, int]:
        """shard_id → highest slice_idx that some checkpoint has trained (sealed against appends)."""
        out: dict[int, int] = {}
        for shard_id in range(self.num_shards):
            for ckpt in self.checkpoint_ids(shard_id):
                out[shard_id] = max(out.get(shard_id, -1), checkpoint_slice(ckpt))
        return out

    # -- versions --------------------------------------------------------------------------------
    def current_version(self) -> int | None:
        return ledgers.read_current(self.fs)

    def size_bytes(self) -> int:
        return self.fs.size("")


def checkpoint_slice(checkpoint_id: str) -> int:
    """Checkpoint ids read `sSSSSS-lLLLLLL-<digest>`: shard and slice are in the name."""
    return int(checkpoint_id.split("-")[1][1:])


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
