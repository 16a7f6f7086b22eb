"""Record data (storage/records.py): one Parquet part per (shard, slice, ingest); a slice read as
its committed parts in ingest order; parts rewritten without records, or with new values, by an
atomic replace; parts older than a column read with that column as nulls."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sisa.storage import layout, records
from sisa.storage.fs import StoreFS
from sisa.storage.schemas import RECORD_SCHEMA


@pytest.fixture
def fs(tmp_path) -> StoreFS:
    return StoreFS(str(tmp_path / "s"))


def _rows(ids: list[str]) -> pa.Table:
    return pa.table({"record_id": ids, "text": [f"text of {i}" for i in ids]})


def test_a_slice_is_its_committed_parts_in_ingest_order(fs):
    second = records.write_part(fs, 0, 0, 2, "two", _rows(["c"]))
    first = records.write_part(fs, 0, 0, 1, "one", _rows(["a", "b"]))
    records.write_part(fs, 0, 1, 3, "crashed", _rows(["x"]))  # never committed
    records.write_part(fs, 0, 2, 3, "crashed", _rows(["y"]))
    records.write_part(fs, 0, 2, 2, "two", _rows(["d"]))
    assert first == layout.slice_part(0, 0, 1, "one") and records.ingest_of_part(first) == "one"
    committed = {"one", "two"}
    assert records.list_parts(fs, 0, 0, committed) == [first, second]
    assert records.list_slices(fs, 0, committed) == [0, 2]  # slice 1 holds only a crashed ingest
    assert records.read_slice(fs, 0, 0, committed)["record_id"].to_pylist() == ["a", "b", "c"]
    assert records.read_slice(fs, 0, 2, committed)["record_id"].to_pylist() == ["d"]
    assert records.read_slice(fs, 0, 1, committed) is None
    assert records.read_slice(fs, 0, 0, committed, columns=["record_id"]).column_names == ["record_id"]
    assert records.read_slice(fs, 0, 0, {"one", "two", "crashed"}) is not None


def test_rewriting_a_part_without_records_replaces_or_deletes_it(fs):
    part = records.write_part(fs, 1, 0, 1, "one", _rows(["a", "b", "c"]))
    assert records.rewrite_part_without(fs, part, pa.array(["zz"])) == 0
    assert records.rewrite_part_without(fs, part, pa.array(["b"])) == 1
    table = pq.read_table(fs.full(part))
    assert table["record_id"].to_pylist() == ["a", "c"] and "text of b" not in table["text"].to_pylist()
    assert records.rewrite_part_without(fs, part, pa.array(["a", "c"])) == 2
    assert not fs.exists(part)
    assert not list(Path(fs.full(layout.TMP)).iterdir())  # nothing staged is left behind


def test_replacing_values_keeps_order_ids_and_other_columns(fs):
    table = pa.table({"record_id": ["a", "b", "c"], "text": ["x", "y", "z"], "n": [1, 2, 3]})
    part = records.write_part(fs, 1, 0, 1, "one", table)
    new = pa.table({"record_id": ["c", "a", "nope"], "text": ["Z", "X", "?"], "note": ["new c", "new a", "?"]})
    assert records.replace_values(fs, part, new) == 2
    table = pq.read_table(fs.full(part))
    assert table["record_id"].to_pylist() == ["a", "b", "c"] and table["n"].to_pylist() == [1, 2, 3]
    assert table["text"].to_pylist() == ["X", "y", "Z"] and table["note"].to_pylist() == ["new a", None, "new c"]
    assert records.replace_values(fs, part, pa.table({"record_id": ["nope"], "text": ["?"]})) == 0


def test_a_part_written_before_a_column_existed_reads_it_as_nulls(fs):
    old = pa.table({"record_id": ["a"], "text": ["x"]})  # before `record_format`
    records.write_part(fs, 0, 0, 1, "old", old)
    got = records.read_slice(fs, 0, 0, {"old"}, columns=["record_id", "record_format"])
    assert got["record_format"].to_pylist() == [None]
    assert got.schema.field("record_format").type == RECORD_SCHEMA.field("record_format").type
    with pytest.raises(pa.ArrowInvalid):  # a column no schema knows is an error, not nulls
        records.read_slice(fs, 0, 0, {"old"}, columns=["record_id", "no_such_column"])
