"""Model versions (sisa/lineage/versions.py): a version entry written once, made current by one
pointer write; numbered in order with its parent; purged or tracked by a rewrite of its one
file, the set of checkpoints never; a purged version never serves again.

On a real store; the checkpoint ids are names only (nothing here reads a checkpoint)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sisa.storage import layout
from sisa.storage.errors import NotFoundError, RefusedError, StoreError
from sisa.storage.store import Store

from sisa.forgetting import rollback
from sisa.lineage import versions
from sisa.offline import OFFLINE_ENV
from tests.helpers import REPO

SHARDS = {0: "s00000-l000001-0123456789abcdef", 1: "s00001-l000000-fedcba9876543210"}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.create(str(tmp_path / "s"), num_shards=2, seed=0)


def _commit(store: Store, **kw) -> versions.ModelVersion:
    return versions.commit_version(store, SHARDS, "train", "fp-train", "tiny", **kw)


def _writes(store: Store, monkeypatch) -> list[str]:
    """The store paths written through the store's filesystem from now on, in order."""
    written: list[str] = []
    write = store.fs.write_bytes

    def spy(rel, data):
        written.append(rel)
        return write(rel, data)

    monkeypatch.setattr(store.fs, "write_bytes", spy)
    return written


def test_a_commit_writes_the_entry_then_moves_the_pointer_once(store, monkeypatch):
    assert versions.current(store) is None
    written = _writes(store, monkeypatch)
    v1 = _commit(store)
    assert written == [layout.version_entry(1), layout.CURRENT]  # the pointer last, one write
    assert versions.current(store) == v1 == versions.read(store, 1)
    assert (v1.model_version, v1.parent, v1.status, v1.shards) == (1, None, versions.ACTIVE, SHARDS)
    assert (v1.aggregation, v1.training_fingerprint, v1.base_model) == ("posterior", "fp-train", "tiny")
    written.clear()
    v2 = _commit(store, request_id="req-1", aggregation="uniform")
    assert written == [layout.version_entry(2), layout.CURRENT]
    assert (v2.model_version, v2.parent, v2.request_ids, v2.aggregation) == (2, 1, ["req-1"], "uniform")
    assert versions.current(store).model_version == 2


def test_a_version_not_made_current_is_written_but_does_not_serve(store, monkeypatch):
    _commit(store)
    written = _writes(store, monkeypatch)
    v2 = _commit(store, make_current=False)
    assert written == [layout.version_entry(2)]
    assert versions.current(store).model_version == 1 and versions.read(store, 2) == v2
    assert [v.model_version for v in versions.all_versions(store)] == [1, 2]


def test_a_crash_between_entry_and_pointer_leaves_the_serving_version(store):
    """SISA_FAULT=pointer-move kills the process after the entry, before the pointer."""
    _commit(store)
    code = (
        "import sys; from sisa.lineage import versions; from storage.store import Store; "
        "versions.commit_version(Store.open(sys.argv[1]), {0: 'x'}, 'train', 'fp', 'tiny')"
    )
    env = {**OFFLINE_ENV, "PYTHONPATH": str(REPO), "SISA_FAULT": "pointer-move"}
    proc = subprocess.run([sys.executable, "-c", code, store.uri], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert versions.current(store).model_version == 1  # still serving what it served
    assert versions.read(store, 2).shards == {0: "x"}  # written, never current
    assert _commit(store).model_version == 3 and versions.current(store).model_version == 3


def test_a_version_of_no_shard_needs_to_be_asked_for(store):
    with pytest.raises(StoreError, match="no shard has a checkpoint"):
        versions.commit_version(store, {}, "train", "fp", "tiny")
    assert versions.current(store) is None
    empty = versions.commit_version(store, {}, "relief", "fp", "tiny", allow_empty=True)
    assert empty.shards == {} and versions.shard_checkpoints(empty) == {} and versions.shard_checkpoints(None) == {}


def test_only_the_status_and_the_mlflow_reference_change_afterwards(store):
    v1 = _commit(store)
    _commit(store)
    versions.record_tracking(store, v1, {"run_id": "abc", "registered_version": "1"})
    versions.mark_purged(store, versions.read(store, 1), "req-7")
    again = versions.read(store, 1)
    assert (again.status, again.purged_by) == (versions.PURGED, "req-7")
    assert again.mlflow == {"run_id": "abc", "registered_version": "1"}
    for kept in ("shards", "reason", "created_at", "aggregation", "training_fingerprint"):
        assert getattr(again, kept) == getattr(v1, kept), kept
    assert versions.read(store, 2).status == versions.ACTIVE and versions.current(store).model_version == 2
    with pytest.raises(NotFoundError, match="model version 9 does not exist"):
        versions.read(store, 9)


def test_a_purged_version_is_refused_as_a_rollback_target(store):
    _commit(store)
    _commit(store)
    versions.mark_purged(store, versions.read(store, 1), "req-7")
    with pytest.raises(RefusedError, match="model version 1 was purged by deletion request req-7"):
        rollback.check_restorable(store, 1)
    assert versions.current(store).model_version == 2  # the refusal moved nothing
