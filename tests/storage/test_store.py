"""The store (storage/store.py): created once, its metadata written last; opened only when its
format is one this sisa reads; the record index always current; records a queued request holds
kept from every read that training makes."""

from __future__ import annotations

import pyarrow as pa
import pytest
from sisa.storage import layout, ledgers, records
from sisa.storage.errors import StoreError
from sisa.storage.schemas import FORGETTING, FORMAT_VERSION, INDEX_SCHEMA, LIVE, RECTIFYING
from sisa.storage.store import Store


def _ingest(store: Store, seq: int, ingest_id: str, ids: list[str], shard: int = 0, sl: int = 0) -> None:
    """Parts, index part and ledger entry of one ingest, in the order an ingest commits them."""
    rows = pa.table({"record_id": ids, "text": [f"t {i}" for i in ids]})
    records.write_part(store.fs, shard, sl, seq, ingest_id, rows)
    index = pa.table(
        {
            "record_id": ids,
            "subject_id": [None] * len(ids),
            "shard_id": pa.array([shard] * len(ids), pa.int32()),
            "slice_idx": pa.array([sl] * len(ids), pa.int32()),
            "source": ["a.jsonl"] * len(ids),
            "ingest_id": [ingest_id] * len(ids),
            "content_sha256": ["0" * 64] * len(ids),
            "status": [LIVE] * len(ids),
        },
        schema=INDEX_SCHEMA,
    )
    store.fs.write_parquet(layout.index_part(seq, ingest_id), index)
    ledgers.write_ingest(store.fs, {"seq": seq, "ingest_id": ingest_id})


def test_a_store_is_created_once_and_opens_with_its_key(tmp_path):
    uri = str(tmp_path / "s")
    assert not Store.exists(uri)
    with pytest.raises(StoreError, match="no store at"):
        Store.open(uri)
    store = Store.create(uri, num_shards=3, seed=7)
    assert Store.exists(uri) and (store.num_shards, store.seed) == (3, 7)
    again = Store.open(uri)
    assert again.key == store.key and again.meta == store.meta
    assert again.hash_ids(["p1"]) == store.hash_ids(["p1"]) == [store.hash_id("p1")]
    with pytest.raises(StoreError, match="a store already exists"):
        Store.create(uri, num_shards=3, seed=7)


def test_a_store_of_a_newer_format_is_refused(tmp_path):
    store = Store.create(str(tmp_path / "s"), num_shards=2, seed=0)
    store.fs.write_json(layout.STORE_META, {**store.meta, "format_version": FORMAT_VERSION + 1})
    with pytest.raises(StoreError, match="upgrade sisa"):
        Store.open(str(tmp_path / "s"))


def test_the_index_holds_committed_ingests_only_and_follows_other_writers(tmp_path):
    store = Store.create(str(tmp_path / "s"), num_shards=2, seed=0)
    _ingest(store, 1, "one", ["a", "b"])
    records.write_part(store.fs, 0, 0, 2, "crashed", pa.table({"record_id": ["x"], "text": ["t"]}))
    assert store.index.table["record_id"].to_pylist() == ["a", "b"] and store.committed_ingests == {"one"}
    other = Store.open(store.uri)  # another process
    _ingest(other, 2, "two", ["c"], shard=1)
    assert sorted(store.index.table["record_id"].to_pylist()) == ["a", "b", "c"]
    assert store.record_slices(0) == [0] and store.record_slices(1) == [0]
    assert store.read_slice(0, 0)["record_id"].to_pylist() == ["a", "b"]


def test_records_a_queued_request_holds_are_kept_from_training_reads(tmp_path):
    store = Store.create(str(tmp_path / "s"), num_shards=2, seed=0)
    _ingest(store, 1, "one", ["a", "b", "c"])
    assert store.mark_records(pa.array(["b"]), FORGETTING) == 1
    assert store.mark_records(pa.array(["b"]), FORGETTING) == 0  # already marked
    assert store.mark_records(pa.array(["c"]), RECTIFYING) == 1
    assert sorted(store.held_ids().to_pylist()) == ["b", "c"]
    assert store.read_slice(0, 0)["record_id"].to_pylist() == ["a"]
    assert store.read_slice(0, 0, columns=["text"]).column_names == ["text"]
    assert store.read_slice(0, 0, include_forgetting=True)["record_id"].to_pylist() == ["a", "b", "c"]
    assert store.mark_records(pa.array(["b", "c"]), LIVE) == 2 and len(store.held_ids()) == 0
    assert store.read_slice(0, 0)["record_id"].to_pylist() == ["a", "b", "c"]
