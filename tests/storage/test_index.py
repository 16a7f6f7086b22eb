"""The record index answers a batch of ids at once: found rows and missing ids."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from sisa.storage import layout, ledgers
from sisa.storage.index import RecordIndex
from sisa.storage.schemas import FORGETTING, INDEX_SCHEMA, LIVE
from sisa.storage.store import Store


def make_index(n: int, num_shards: int = 4, slice_size: int = 10) -> pa.Table:
    ids = [f"r{i:06d}" for i in range(n)]
    return pa.table(
        {
            "record_id": ids,
            "subject_id": [f"p{i // 3}" if i % 5 else None for i in range(n)],
            "shard_id": pa.array([i % num_shards for i in range(n)], pa.int32()),
            "slice_idx": pa.array([(i // num_shards) // slice_size for i in range(n)], pa.int32()),
            "source": ["a.jsonl" if i < n // 2 else "b.csv" for i in range(n)],
            "ingest_id": ["i1" if i < n // 2 else "i2" for i in range(n)],
            "content_sha256": [f"{i:064x}" for i in range(n)],
            "status": [FORGETTING if i == 7 else LIVE for i in range(n)],
        },
        schema=INDEX_SCHEMA,
    )


@pytest.fixture(scope="module")
def index() -> RecordIndex:
    return RecordIndex(make_index(200_000))


@pytest.mark.parametrize("kind", ["list", "array", "chunked"])
def test_lookup_returns_found_rows_and_missing_ids(index, kind):
    wanted = ["r000003", "r150000", "nope-1", "r199999", "nope-2"]
    ids = {
        "list": wanted,
        "array": pa.array(wanted),
        "chunked": pa.chunked_array([wanted[:2], wanted[2:]]),
    }[kind]
    found, missing = index.lookup(ids)
    assert found.schema == INDEX_SCHEMA
    assert found["record_id"].to_pylist() == ["r000003", "r150000", "r199999"]
    assert found["shard_id"].to_pylist() == [3, 0, 3]
    assert found["slice_idx"].to_pylist() == [0, 150000 // 4 // 10, 199999 // 4 // 10]
    assert found["ingest_id"].to_pylist() == ["i1", "i2", "i2"]
    assert sorted(missing.to_pylist()) == ["nope-1", "nope-2"]


def test_lookup_of_many_ids_matches_a_python_dict(index):
    ids = [f"r{i:06d}" for i in range(0, 400_000, 37)]  # half beyond the index
    found, missing = index.lookup(ids)
    expected_found = [i for i in ids if int(i[1:]) < 200_000]
    assert set(found["record_id"].to_pylist()) == set(expected_found)
    assert len(found) == len(expected_found)
    assert set(missing.to_pylist()) == set(ids) - set(expected_found)
    by_id = dict(zip(found["record_id"].to_pylist(), found["shard_id"].to_pylist(), strict=True))
    assert all(by_id[i] == int(i[1:]) % 4 for i in expected_found)


def test_lookup_with_repeated_and_empty_queries(index):
    found, missing = index.lookup(["r000001", "r000001", "x", "x"])
    assert found["record_id"].to_pylist() == ["r000001"]
    assert missing.to_pylist() == ["x", "x"]
    found, missing = index.lookup([])
    assert found.num_rows == 0 and len(missing) == 0


def test_lookup_on_an_empty_index():
    found, missing = RecordIndex().lookup(["a", "b"])
    assert found.num_rows == 0 and found.schema == INDEX_SCHEMA
    assert missing.to_pylist() == ["a", "b"]


def test_contains_is_a_mask_over_the_query(index):
    assert index.contains(pa.array(["r000000", "zz", "r000002"])).to_pylist() == [True, False, True]


def test_select_by_subject_source_and_ingest(index):
    assert index.select("subject_id", ["p1"])["record_id"].to_pylist() == ["r000003", "r000004"]
    assert index.select("ingest_id", ["i2"]).num_rows == 100_000
    assert index.select("source", ["a.jsonl", "b.csv"]).num_rows == 200_000
    assert index.select("subject_id", ["nobody"]).num_rows == 0


def test_live_excludes_records_being_forgotten(index):
    live = index.live()
    assert live.num_rows == 199_999
    assert "r000007" not in set(live["record_id"].to_pylist())


def test_counts_per_shard_and_slice():
    idx = RecordIndex(make_index(100, num_shards=2, slice_size=10))
    counts = idx.counts().to_pylist()
    assert counts[:2] == [
        {"shard_id": 0, "slice_idx": 0, "records": 10},
        {"shard_id": 0, "slice_idx": 1, "records": 10},
    ]
    assert sum(r["records"] for r in counts) == 100
    assert [(r["shard_id"], r["slice_idx"]) for r in counts] == sorted((r["shard_id"], r["slice_idx"]) for r in counts)
    assert RecordIndex().counts().num_rows == 0
    assert RecordIndex().counts(live_only=True).num_rows == 0


def test_live_counts_leave_out_records_being_forgotten():
    idx = RecordIndex(make_index(100, num_shards=2, slice_size=10))
    (gone,) = idx.table.filter(pc.equal(idx.table["status"], FORGETTING)).to_pylist()
    every = {(r["shard_id"], r["slice_idx"]): r["records"] for r in idx.counts().to_pylist()}
    live = {(r["shard_id"], r["slice_idx"]): r["records"] for r in idx.counts(live_only=True).to_pylist()}
    where = (gone["shard_id"], gone["slice_idx"])
    assert live[where] == every[where] - 1
    assert {k: v for k, v in live.items() if k != where} == {k: v for k, v in every.items() if k != where}


def test_store_index_reads_only_committed_ingests(tmp_path):
    store = Store.create(str(tmp_path / "s"), num_shards=4, seed=0)
    table = make_index(50)
    store.fs.write_parquet(layout.index_part(1, "i1"), table.slice(0, 25))
    store.fs.write_parquet(layout.index_part(2, "i2"), table.slice(25))
    ledgers.write_ingest(store.fs, {"seq": 1, "ingest_id": "i1"})
    # i2 has index rows but no ledger entry: a crash leftover, never read.
    assert len(store.index) == 25
    found, missing = store.index.lookup(["r000001", "r000030"])
    assert found["record_id"].to_pylist() == ["r000001"]
    assert missing.to_pylist() == ["r000030"]
    ledgers.write_ingest(store.fs, {"seq": 2, "ingest_id": "i2"})
    assert len(store.index) == 50


def test_store_index_is_never_stale(tmp_path):
    """No caller refreshes: a change by this Store object, or by another one (another process),
    is seen by the next read of `store.index`; an unchanged store is not re-read."""
    ours = Store.create(str(tmp_path / "s"), num_shards=4, seed=0)
    theirs = Store.open(str(tmp_path / "s"))
    table = make_index(30)
    ours.fs.write_parquet(layout.index_part(1, "i1"), table)
    ledgers.write_ingest(ours.fs, {"seq": 1, "ingest_id": "i1"})
    first = ours.index
    assert len(first) == 30 and ours.index is first  # cached while nothing changed
    assert len(theirs.index) == 30
    # Another writer drops rows from the part: both objects see it on their next read.
    theirs.fs.write_parquet(layout.index_part(1, "i1"), table.slice(0, 20))
    assert len(theirs.index) == 20
    assert len(ours.index) == 20
    ours.fs.write_parquet(layout.index_part(1, "i1"), table.slice(0, 20).cast(INDEX_SCHEMA))
    assert ours.index.table["record_id"].to_pylist() == table.slice(0, 20)["record_id"].to_pylist()


# -- lookups through the id hashes (an index asked more than once) ---------------------------------
def _hashed(table: pa.Table) -> RecordIndex:
    idx = RecordIndex(table)
    idx.lookup(["warm-up"])  # a first lookup scans; later small ones use the id hashes
    return idx


ODD_IDS = ["", " ", "a", "é", "日本語", "ключ", "a" * 600, "r000001\x00", "emoji-🙂", "r00000", "r0000010"]


@pytest.mark.parametrize(
    "query",
    [
        ["r000003", "r150000", "nope-1", "r199999", "nope-2"],
        ["r000001", "r000001", "x", "x"],
        ODD_IDS,
        [f"r{i:06d}" for i in range(5, 12_000, 7)],
        [],
    ],
    ids=["mixed", "repeated", "odd", "many", "empty"],
)
def test_hashed_lookups_answer_as_the_scan_does(query):
    table = pa.concat_tables([make_index(2_000), make_index(200_000).slice(2_000)])  # two chunks
    for kind in ("list", "array", "chunked", "sliced"):
        ids = {
            "list": query,
            "array": pa.array(query, pa.string()),
            "chunked": pa.chunked_array([query[:1], query[1:]], pa.string()),
            "sliced": pa.array(["pad", *query], pa.string()).slice(1),
        }[kind]
        scanned, scan_missing = RecordIndex(table).lookup(ids)
        index = _hashed(table)
        hashed, hash_missing = index.lookup(ids)
        assert index._sorted is not None  # the answer came through the id hashes
        assert hashed.equals(scanned), kind
        assert hash_missing.to_pylist() == scan_missing.to_pylist(), kind


def test_hashed_lookups_find_odd_ids_and_only_them():
    ids = ODD_IDS + [f"other-{i}" for i in range(1_000)]
    table = pa.table(
        {
            "record_id": ids,
            "subject_id": pa.nulls(len(ids), pa.string()),
            "shard_id": pa.array([0] * len(ids), pa.int32()),
            "slice_idx": pa.array([0] * len(ids), pa.int32()),
            "source": ["s"] * len(ids),
            "ingest_id": ["i"] * len(ids),
            "content_sha256": ["0" * 64] * len(ids),
            "status": [LIVE] * len(ids),
        },
        schema=INDEX_SCHEMA,
    )
    found, missing = _hashed(table).lookup(ODD_IDS + ["a" * 599, "日本", None])
    assert found["record_id"].to_pylist() == ODD_IDS
    assert missing.to_pylist() == ["a" * 599, "日本", None]


def test_colliding_hashes_cost_time_not_answers(monkeypatch):
    """Equal hashes are only candidates: with a hash that maps every id to one of 3 values, the
    answers stay exact."""
    from sisa.storage import index as index_module

    real = index_module.id_hashes
    monkeypatch.setattr(index_module, "id_hashes", lambda ids: real(ids) % 3)
    table = make_index(5_000)
    query = ["r000010", "r004999", "r000010", "nope", "r005000"]
    index = _hashed(table)
    found, missing = index.lookup(query)
    assert index._sorted is not None
    assert found["record_id"].to_pylist() == ["r000010", "r004999"]
    assert missing.to_pylist() == ["nope", "r005000"]


def test_id_hashes_depend_on_the_bytes_only(monkeypatch):
    from sisa.storage import index as index_module
    from sisa.storage.index import id_hashes

    monkeypatch.setattr(index_module, "_HASH_BYTES", 4096)  # many numpy steps per chunk
    values = ODD_IDS + [f"r{i:06d}" for i in range(10_000)]
    whole = id_hashes(pa.array(values))
    assert whole.dtype.name == "uint64" and len(whole) == len(values)
    chunked = id_hashes(pa.chunked_array([values[:3], values[3:5000], values[5000:]]))
    sliced = id_hashes(pa.array(["x", *values, "y"]).slice(1, len(values)))
    large = id_hashes(pa.array(values, pa.large_string()))
    assert (whole == chunked).all() and (whole == sliced).all() and (whole == large).all()
    assert len(set(whole.tolist())) == len(values)  # no collisions among these
