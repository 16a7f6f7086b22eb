"""Batches after a bridge: each affected shard retrains once from its last clean checkpoint,
never from a checkpoint the bridge computed from the text being forgotten, and no batch runs
while a request carried out alone is unfinished."""

from __future__ import annotations

from pathlib import Path

import pytest
from sisa.pipelines import forget as forget_pipeline
from sisa.pipelines.ingest import run as ingest_run
from sisa.pipelines.train import run as train_run
from sisa.storage import layout
from sisa.storage.errors import RefusedError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people, write_jsonl
from sisa.forgetting import runner, selection
from sisa.forgetting.phases import InFlight
from sisa.forgetting.record_texts import read_texts
from sisa.lineage import checkpoints, versions
from sisa.lineage.requests_ledger import RequestMode
from tests.helpers import make_cfg

pytestmark = pytest.mark.slow  # trains the tiny model


def _trained(tmp_path: Path, people: int):
    cfg = make_cfg(tmp_path / "store", "deletion.relief=true")
    ingest_run(cfg, [str(write_jsonl(make_people(people, facts_per_person=2), tmp_path / "people.jsonl"))])
    train_run(cfg)
    return cfg, Store.open(cfg.store.uri)


def _process(store: Store, cfg) -> runner.BatchResult:
    with store.lock("test process", cfg.store.lock_timeout_s):
        return runner.process(store, cfg, evidence=False)


def test_a_batch_after_isolate_retrains_from_the_checkpoint_before_the_hit_not_from_scratch(tmp_path: Path) -> None:
    cfg, store = _trained(tmp_path, 64)
    idx = store.index.table.to_pylist()
    subject = next(r["subject_id"] for r in idx if r["slice_idx"] == 2)
    req = forget_pipeline.run(cfg, "subject", [subject], isolate=True, queue=True, evidence=False, quiet=True)[
        "request"
    ]
    (shard_plan,) = req["plan"]["shards"]
    assert shard_plan["shard_id"] not in versions.current(store).shards  # the isolating version leaves it out

    res = _process(store, cfg)
    (job,) = res.retrained
    assert job.shard_id == shard_plan["shard_id"]
    assert [s.slice_idx for s in job.slices][0] == shard_plan["earliest_slice"] == 2


@pytest.mark.parametrize("run", ["process", "train"])
def test_a_batch_after_fast_never_keeps_the_approximate_checkpoint(tmp_path: Path, run: str) -> None:
    # Records ingested after the last training: the fast path unlearns them from a checkpoint
    # that never trained them, so its approximate checkpoint sits below the hit slice.
    cfg, store = _trained(tmp_path, 32)
    late = make_people(16, facts_per_person=2, start=32)
    ingest_run(cfg, [str(write_jsonl(late, tmp_path / "late.jsonl"))])
    before = dict(versions.current(store).shards)
    forget_pipeline.run(cfg, "subject", [late[0]["subject_id"]], fast=True, queue=True, evidence=False, quiet=True)
    assert versions.current(store).approximate
    approx = [c for c in versions.current(store).shards.values() if checkpoints.is_approximate(c)]
    assert approx

    if run == "process":
        _process(store, cfg)
    else:  # `sisa train` runs the batch and trains the new slices in the same shard jobs
        train_run(cfg)
    exact = versions.current(store)
    assert not exact.approximate
    assert not [a for c in exact.shards.values() for a in checkpoints.chain(store, c) if checkpoints.is_approximate(a)]
    if run == "process":  # nothing that served had trained the records: the version before serves again
        assert exact.shards == before
    # Its parent never saw the records, but it read their text: the purge deletes it all the same.
    assert checkpoints.checkpoints_holding(store, set(store.hash_ids([late[0]["record_id"]]))) == set()
    for cid in approx:
        assert not store.fs.exists(layout.checkpoint_dir(checkpoints.shard_of(cid), cid)), cid


def test_a_batch_waits_for_a_request_that_is_carried_out_alone(tmp_path: Path) -> None:
    # A queued request, then a `forget --fast` that died after its bridge and its delete (what
    # SISA_FAULT=forget-after-delete leaves): the approximate version serves, the request is open.
    cfg, store = _trained(tmp_path, 64)
    by_shard: dict[int, list[str]] = {}
    for r in store.index.table.to_pylist():
        if r["slice_idx"] == 2:
            by_shard.setdefault(r["shard_id"], []).append(r["subject_id"])
    forget_pipeline.run(cfg, "subject", [by_shard[0][0]], queue=True, evidence=False, quiet=True)
    with store.lock("test forget", cfg.store.lock_timeout_s):
        sel = selection.select_records(store, "subject", [by_shard[1][0]])
        req = runner.new_request(
            store, cfg, sel, selection.plan_selection(store, cfg, sel), RequestMode.FAST, False, None
        )
        item = InFlight(req, sel.rows, new=True)
        item.texts, item.prompts = read_texts(store, sel.rows)
        runner.carry_out(store, cfg, runner.new_run(store), [item], until="delete")
    serving = versions.current(store)
    assert serving.approximate

    # Otherwise the batch commits the approximate checkpoint as part of an exact version, and the
    # resumed request then commits over the batch from the version it started from.
    with pytest.raises(RefusedError, match=req.request_id):
        _process(store, cfg)
    assert versions.current(store).model_version == serving.model_version
