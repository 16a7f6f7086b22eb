"""One training config per store, one read per slice, the runtime in every checkpoint, and a
retried job that does not train again (issue 31), on the tiny model with real Parquet, real
checkpoints and real peft adapters.

The bug feared most: a version called exact that no config reproduces (a shard retrained under
another config beside shards trained under the store's), or a checkpoint that trained on a record
its lineage does not list, so the purge of that record misses it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sisa.pipelines import forget, process, train
from sisa.storage import layout
from sisa.storage.errors import RefusedError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.lineage import checkpoints, versions
from sisa.training import chain
from sisa.training.shard_job import ShardTask, train_shard
from tests.helpers import cli_args, make_cfg, one_slice_subjects, run_cli
from tests.pipelines.helpers import adapter_tensors, assert_tensors_equal, serving_shards

pytestmark = pytest.mark.slow
SLICES = ("sharding.slice_size=8",)
OTHER = ("lora.r=6", "training.lr=0.0123")  # the review's forget under another config


def _fingerprints(store: Store, shards: dict[int, str]) -> set[str]:
    return {checkpoints.read_manifest(store, s, c)["training_fingerprint"] for s, c in shards.items()}


def test_a_forget_under_another_config_retrains_under_the_stores_and_says_so(tmp_path, make_trained_store):
    cfg, store = make_trained_store(make_people(12, seed=31), *SLICES)
    subject = next(iter(one_slice_subjects(store)))
    code, out, err = run_cli("forget", "--subject", subject, *cli_args(tmp_path / "s", *SLICES, *OTHER))
    assert code == 0, out + err
    assert "lora.r: 4 (the store's) vs 6 (given)" in out + err and "training.lr" in out + err
    served = serving_shards(store)
    # Never a mixed version: every served checkpoint and the version itself carry the store's config.
    assert _fingerprints(store, served) == {cfg.training_fingerprint()}
    assert versions.current(store).training_fingerprint == cfg.training_fingerprint()
    for shard, cid in served.items():
        manifest = checkpoints.read_manifest(store, shard, cid)
        assert manifest["training_config"]["lora"]["r"] == 4 and manifest["training_config"]["training"]["lr"] == 0.005
    # The replay reproduces it under either config given (it too trains as the store was trained).
    for extra in ((), OTHER):
        code, out, err = run_cli("verify", "--replay", *cli_args(tmp_path / "s", *SLICES, *extra))
        assert code == 0 and "verified" in out, out + err


def test_train_under_another_config_is_refused_naming_every_key_and_changes_nothing(tmp_path, make_trained_store):
    cfg, store = make_trained_store(make_people(8, seed=32), *SLICES)
    before = versions.current(store).model_version
    from tests.helpers import ingest_rows

    ingest_rows(cfg, make_people(4, seed=33, start=500), tmp_path / "more.jsonl")
    code, out, err = run_cli("train", *cli_args(tmp_path / "s", *SLICES, *OTHER))
    assert code != 0
    assert "lora.r: 4 (the store's) vs 6 (given)" in err and "training.lr: 0.005 (the store's) vs 0.0123" in err
    assert "--from-scratch" in err
    assert versions.current(store).model_version == before
    # The store's own config trains the new slices; --from-scratch starts every chain under the new one.
    assert train.run(cfg).model_version == before + 1
    other = make_cfg(tmp_path / "s", *SLICES, *OTHER)
    res = train.run(other, from_scratch=True)
    assert _fingerprints(store, serving_shards(store)) == {other.training_fingerprint()}
    assert versions.current(store).model_version == res.model_version


def test_a_queued_request_processed_under_another_config_keeps_the_stores(tmp_path, make_trained_store):
    cfg, store = make_trained_store(make_people(12, seed=34), *SLICES, "deletion.relief=true")
    subject = next(iter(one_slice_subjects(store)))
    forget.run(cfg, "subject", [subject], queue=True, evidence=False, quiet=True)
    other = make_cfg(tmp_path / "s", *SLICES, "deletion.relief=true", *OTHER)
    res = process.run(other, quiet=True)
    assert res["retrained_shards"]
    assert _fingerprints(store, serving_shards(store)) == {cfg.training_fingerprint()}


def test_the_shard_job_itself_refuses_to_continue_a_chain_under_another_config(tmp_path, make_trained_store):
    """Whatever planned it: a task continuing a checkpoint, or training slice 0 into a store that
    serves a version, under another config is refused before it trains; a fresh chain is not."""
    cfg, store = make_trained_store(make_people(12, seed=35), *SLICES)
    other = make_cfg(tmp_path / "s", *SLICES, *OTHER)
    shard, head = max(serving_shards(store).items(), key=lambda kv: checkpoints.slice_of(kv[1]))
    last = checkpoints.slice_of(head)
    parent = checkpoints.parent_of(store, head)
    assert parent is not None, "the test data should give a shard two slices"
    cont = ShardTask(store.uri, other.to_dict(), shard, (last,), parent, purpose="forget")
    with pytest.raises(RefusedError, match=r"lora\.r: 4 \(the store's\) vs 6 \(given\)"):
        train_shard(cont)
    scratch = ShardTask(store.uri, other.to_dict(), shard, tuple(range(last + 1)), None, purpose="forget")
    with pytest.raises(RefusedError, match="serving version's checkpoints"):
        train_shard(scratch)
    on_disk = set(checkpoints.checkpoint_ids(store, shard))
    fresh = ShardTask(store.uri, other.to_dict(), shard, (0,), None, fresh_chain=True)
    assert train_shard(fresh).slices[0].steps > 0
    assert len(set(checkpoints.checkpoint_ids(store, shard)) - on_disk) == 1
    assert chain.chain_config(store, other).training_fingerprint() == cfg.training_fingerprint()


def test_a_retried_job_skips_the_slices_whose_checkpoints_exist_and_continues_exactly(tmp_path, make_trained_store):
    cfg, store = make_trained_store(make_people(16, seed=36), *SLICES)
    shard, head = max(serving_shards(store).items(), key=lambda kv: checkpoints.slice_of(kv[1]))
    slices = tuple(range(checkpoints.slice_of(head) + 1))
    assert len(slices) >= 3, "the test data should give a shard three slices"
    task = ShardTask(store.uri, cfg.to_dict(), shard, slices, None)
    again = train_shard(task)
    assert [s.checkpoint_id for s in again.slices][-1] == head
    assert all(s.reused and s.steps == 0 for s in again.slices)  # nothing trained again
    # A job cut short after its first slices: the last one is trained again from the one before,
    # whose state (adapter and optimizer) is loaded, and gives the same bytes.
    first = adapter_tensors(store, head)
    import shutil

    shutil.rmtree(store.fs.full(layout.checkpoint_dir(shard, head)))
    resumed = train_shard(task)
    assert [s.reused for s in resumed.slices] == [True] * (len(slices) - 1) + [False]
    assert resumed.slices[-1].steps > 0 and resumed.slices[-1].checkpoint_id == head
    assert_tensors_equal(adapter_tensors(store, head), first, "the slice trained again")


def test_checkpoints_record_their_runtime_and_another_runtime_is_refused_unless_allowed(
    tmp_path, make_trained_store, capfd
):
    cfg, store = make_trained_store(make_people(12, seed=37), *SLICES)
    shard, head = sorted(serving_shards(store).items())[0]
    manifest = checkpoints.read_manifest(store, shard, head)
    runtime = manifest["runtime"]
    assert runtime["device"] == "cpu" and runtime["dtype"] == "float32" and runtime["threads"] == 1
    assert runtime["torch"] and runtime["transformers"] and runtime["peft"] and runtime["gpu"] is None
    # The same chain as if it had been trained under another torch.
    path = Path(store.fs.full(f"{layout.checkpoint_dir(shard, head)}/{checkpoints.MANIFEST}"))
    manifest["runtime"] = {**runtime, "torch": "0.0.1-elsewhere"}
    path.write_text(json.dumps(manifest))
    from tests.helpers import ingest_rows

    ingest_rows(cfg, make_people(40, seed=38, start=900), tmp_path / "more.jsonl")
    code, out, err = run_cli("train", *cli_args(tmp_path / "s", *SLICES))
    assert code != 0 and "torch: 0.0.1-elsewhere -> " in err and "model.runtime_change=allow" in err, out + err
    code, out, err = run_cli("train", *cli_args(tmp_path / "s", *SLICES, "model.runtime_change=allow"))
    assert code == 0, out + err
    # verify --replay says before it trains that identical tensors are not expected for that chain.
    code, out, err = run_cli("verify", "--replay", *cli_args(tmp_path / "s", *SLICES))
    assert "identical tensors are NOT expected here" in out and "0.0.1-elsewhere" in out, out + err
    assert out.index("NOT expected") < out.index("replay     shard")
    code, out, err = run_cli("verify", "--replay", "--json", *cli_args(tmp_path / "s", *SLICES))
    report = json.loads(out)
    assert report["replay_runtime"]["bit_exact_expected"] is False
    assert all("max_abs_diff" in r for r in report["replay"].values())


def test_a_record_held_between_the_read_and_the_training_is_in_the_lineage_and_purged(tmp_path, make_trained_store):
    """A batch lets go of the writer lock while its shard jobs train. A `forget --queue` landing
    right after a job read its slice (the `slice-read` fault point holds the job there) must not
    leave a checkpoint trained on the record without the record in its lineage: the purge, which
    finds tainted checkpoints by lineage, would miss it."""
    from tests.reliability.helpers import sisa_popen

    extra = (*SLICES, "deletion.relief=true", "store.lock_timeout_s=60")
    cfg, store = make_trained_store(make_people(24, seed=39), *extra)
    single = one_slice_subjects(store)
    first, (shard, sl) = next((s, p) for s, p in single.items() if p[1] >= 1)
    second = next(s for s, p in single.items() if p == (shard, sl) and s != first)  # in the slice retrained first
    forget.run(cfg, "subject", [first], queue=True, evidence=False, quiet=True)
    on_disk = set(checkpoints.checkpoint_ids(store, shard))

    hang = tmp_path / "held-at-slice-read"
    batch = sisa_popen("process", *cli_args(tmp_path / "s", *extra), SISA_FAULT="slice-read", SISA_FAULT_HANG=str(hang))
    deadline = time.monotonic() + 240
    while not hang.exists():
        assert batch.poll() is None, describe_popen(batch)
        assert time.monotonic() < deadline, "the batch's shard job never read its slice"
        time.sleep(0.2)
    late = forget.run(cfg, "subject", [second], queue=True, evidence=False, quiet=True)["request"]
    hang.unlink()  # the job goes on with what it read: the second subject's records included
    stdout, stderr = batch.communicate(timeout=300)
    assert batch.returncode == 0, f"{stdout[-2000:]}\n{stderr[-2000:]}"
    trained_on_it = set(checkpoints.checkpoint_ids(store, shard)) - on_disk
    assert trained_on_it, "the batch should have retrained the shard"
    hashes = set(store.hash_ids(store.index.select("subject_id", [second])["record_id"].to_pylist()))
    # The checkpoint of the slice it read lists the record it trained on (later slices descend from it).
    at_slice = {c for c in trained_on_it if checkpoints.slice_of(c) == sl}
    assert at_slice and at_slice <= checkpoints.checkpoints_holding(store, hashes, [shard])
    res = process.run(cfg, quiet=True)  # carries out the late request: its purge must find them all
    assert res["requests"] == [late["request_id"]]
    assert not (set(checkpoints.checkpoint_ids(store, shard)) & trained_on_it)
    code, out, err = run_cli("verify", "--replay", *cli_args(tmp_path / "s", *extra))
    assert code == 0 and "verified" in out, out + err


def describe_popen(proc) -> str:
    out, err = proc.communicate(timeout=5)
    return f"exit {proc.returncode}\n{out[-2000:]}\n{err[-2000:]}"


def test_a_rectification_under_another_config_retrains_under_the_stores(tmp_path, make_trained_store):
    from sisa.data.synthetic import write_jsonl

    cfg, store = make_trained_store(make_people(10, seed=40), *SLICES)
    rid = store.index.table["record_id"].to_pylist()[3]
    write_jsonl([{"record_id": rid, "text": "a corrected record about nobody in particular."}], tmp_path / "fix.jsonl")
    code, out, err = run_cli(
        "rectify", "--file", str(tmp_path / "fix.jsonl"), *cli_args(tmp_path / "s", *SLICES, *OTHER)
    )
    assert code == 0, out + err
    assert "lora.r: 4 (the store's) vs 6 (given)" in out + err
    assert _fingerprints(store, serving_shards(store)) == {cfg.training_fingerprint()}


def test_the_services_worker_carries_a_batch_under_the_stores_config(tmp_path, make_trained_store):
    import threading

    from sisa.storage.audit import AuditLog

    from sisa.service.worker import Worker

    extra = (*SLICES, "deletion.relief=true", "deletion.batch_after_h=0")
    cfg, store = make_trained_store(make_people(12, seed=41), *extra)
    forget.run(cfg, "subject", [next(iter(one_slice_subjects(store)))], queue=True, evidence=False, quiet=True)
    other = make_cfg(tmp_path / "s", *extra, *OTHER)
    worker = Worker(other, AuditLog(store.fs), threading.Lock())
    assert worker.run_once()
    assert versions.current(store).reason == "forget-batch"
    assert _fingerprints(store, serving_shards(store)) == {cfg.training_fingerprint()}


def test_a_store_recorded_before_prompt_loss_weight_existed_keeps_its_completion_only_loss(
    tmp_path, make_trained_store, monkeypatch
):
    """Its manifests lack the key and it trained with the completion-only loss: a request or
    replay under today's default (0.1) retrains it at 0, naming the key, and `sisa train` names it."""
    cfg, store = make_trained_store(make_people(8, seed=37), *SLICES, "training.prompt_loss_weight=0")
    recorded = chain.recorded_sections(store)
    del recorded["training"]["prompt_loss_weight"]
    monkeypatch.setattr(chain, "recorded_sections", lambda store: recorded)
    given = make_cfg(tmp_path / "s", *SLICES)
    assert given.training.prompt_loss_weight == 0.1
    said: list[str] = []
    resolved = chain.chain_config(store, given, said.append)
    assert resolved.training.prompt_loss_weight == 0.0
    assert resolved.training_fingerprint() == cfg.training_fingerprint()
    assert "training.prompt_loss_weight: 0.0 (the store's) vs 0.1 (given)" in said[0]
