"""Ledgers (storage/ledgers.py): each entry its own JSON file, created once and then rewritten
whole; the current pointer one small file; request ids that would leave requests/ refused."""

from __future__ import annotations

import pytest
from sisa.storage import layout, ledgers
from sisa.storage.errors import NotFoundError, StoreError, ValidationError
from sisa.storage.fs import StoreFS


@pytest.fixture
def fs(tmp_path) -> StoreFS:
    return StoreFS(str(tmp_path / "s"))


def test_a_version_entry_is_created_once_and_numbered_after_the_highest(fs):
    assert ledgers.list_versions(fs) == [] and ledgers.next_version_number(fs) == 1
    ledgers.write_version(fs, {"model_version": 1, "status": "active"})
    ledgers.write_version(fs, {"model_version": 3, "status": "active"})
    assert ledgers.next_version_number(fs) == 4
    with pytest.raises(StoreError, match="model version 1 exists already"):
        ledgers.write_version(fs, {"model_version": 1, "status": "other"})
    assert ledgers.read_version(fs, 1)["status"] == "active"  # the refused write changed nothing
    ledgers.write_version(fs, {"model_version": 1, "status": "purged"}, new=False)
    assert ledgers.read_version(fs, 1)["status"] == "purged"
    assert sorted(v["model_version"] for v in ledgers.list_versions(fs)) == [1, 3]
    with pytest.raises(NotFoundError, match="model version 2 does not exist"):
        ledgers.read_version(fs, 2)


def test_the_current_pointer_is_one_file(fs):
    assert ledgers.read_current(fs) is None
    ledgers.write_current(fs, 2)
    assert ledgers.read_current(fs) == 2 and fs.read_json(layout.CURRENT) == {"model_version": 2}
    ledgers.write_current(fs, 5)
    assert ledgers.read_current(fs) == 5


def test_ingest_entries_are_append_only_and_their_counts_rewritten(fs):
    entry = {"seq": 1, "ingest_id": "abc", "records": 10}
    ledgers.write_ingest(fs, entry)
    with pytest.raises(StoreError, match="exists already"):
        ledgers.write_ingest(fs, entry)
    ledgers.rewrite_ingest(fs, {**entry, "records": 7})
    assert ledgers.list_ingests(fs) == [{**entry, "records": 7}]
    assert fs.exists(layout.ingest_entry(1, "abc"))


def test_requests_list_in_arrival_order_and_bad_ids_never_become_paths(fs):
    ledgers.write_request(fs, {"request_id": "req-b", "received_at": "2026-01-02T00:00:00"})
    ledgers.write_request(fs, {"request_id": "req-a", "received_at": "2026-01-03T00:00:00"})
    assert [r["request_id"] for r in ledgers.list_requests(fs)] == ["req-b", "req-a"]
    assert ledgers.read_request(fs, "req-a")["received_at"] == "2026-01-03T00:00:00"
    with pytest.raises(NotFoundError, match="req-zz does not exist"):
        ledgers.read_request(fs, "req-zz")
    for bad in ["", "../store", ".hidden", "a/b", "a\\b", "a\x00b"]:
        with pytest.raises(ValidationError, match="is not a deletion request id"):
            ledgers.read_request(fs, bad)
