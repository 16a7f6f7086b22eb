"""`sisa train` end to end: versions, determinism, manifests and lineage, incremental training,
Ray vs serial, MLflow, failed shard jobs, and the refusal while a deletion is open.

The contract (README, "Guarantees and their limits"): seeds derive from (store seed, shard_id,
slice_idx), so the same data and config give the same adapter bytes in any store, on any
backend, trained at once or slice by slice; a shard with nothing new is reused byte for byte; a
failed shard job commits nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from sisa.pipelines import forget, train
from sisa.pipelines import versions as versions_pipeline
from sisa.storage import layout, ledgers
from sisa.storage.errors import IntegrityError, RefusedError, ShardJobError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.forgetting import erasure
from sisa.lineage import checkpoints, versions
from sisa.training.shard_job import ShardTask, train_shard
from tests.helpers import cli_args, ingest_rows, make_cfg, run_cli, train_store, tree_digest
from tests.pipelines.helpers import (
    adapter_tensors,
    all_checkpoints,
    assert_tensors_equal,
    checkpoint_dir,
    load_tensors,
    optimizer_tensors,
    people_in_shards,
    serving_shards,
)

SLICES = ["sharding.slice_size=8"]  # 40 records → several slices per shard, still seconds


def _assert_same_checkpoints(a: Store, b: Store) -> None:
    """Every (shard, slice) checkpoint of `a` has the same adapter and optimizer tensors in `b`.
    Checkpoint ids differ across stores (lineage digests use each store's secret key), so the
    comparison goes by shard and slice."""
    ca, cb = all_checkpoints(a), all_checkpoints(b)
    assert sorted(ca) == sorted(cb)
    for key in sorted(ca):
        assert len(ca[key]) == len(cb[key]) == 1, key
        what = f"shard {key[0]} slice {key[1]}"
        assert_tensors_equal(adapter_tensors(a, ca[key][0]), adapter_tensors(b, cb[key][0]), what + " adapter")
        assert_tensors_equal(optimizer_tensors(a, ca[key][0]), optimizer_tensors(b, cb[key][0]), what + " optimizer")


# -- version 1 ------------------------------------------------------------------------------------
def test_train_commits_version_one_and_moves_the_pointer(tmp_path, capfd):
    rows = make_people(20, seed=1)
    args = cli_args(tmp_path / "s", *SLICES)
    cfg = make_cfg(tmp_path / "s", *SLICES)
    ingest_rows(cfg, rows, tmp_path / "input" / "people.jsonl")
    capfd.readouterr()

    code, out, err = run_cli("train", *args, capfd=capfd)
    assert code == 0, err
    assert "committed model version 1" in out

    store = Store.open(cfg.store.uri)
    assert store.current_version() == 1
    assert json.loads((tmp_path / "s" / layout.CURRENT).read_text()) == {"model_version": 1}
    v1 = versions.current(store)
    assert v1.model_version == 1 and v1.status == "active" and v1.reason == "train"
    assert v1.parent is None and v1.approximate is False
    assert v1.training_fingerprint == cfg.training_fingerprint()
    assert v1.aggregation == cfg.serving.aggregation == "posterior"
    # One checkpoint per shard, at the shard's last slice, whose ancestry covers every slice.
    populated = {r["shard_id"] for r in store.index.counts().to_pylist()}
    assert set(serving_shards(store)) == populated
    for shard, cid in serving_shards(store).items():
        assert checkpoints.slice_of(cid) == max(checkpoints.shard_slices(store, shard))
        assert checkpoint_dir(store, cid).is_dir()

    listed = versions_pipeline.run(cfg)
    assert listed["current"] == 1 and [v["model_version"] for v in listed["versions"]] == [1]
    code, out, _ = run_cli("versions", *args, capfd=capfd)
    assert code == 0 and "train" in out

    # Nothing new: a second train is a no-op and commits nothing.
    res = train.run(cfg)
    assert res.noop and res.model_version == 1
    assert [v.model_version for v in versions.all_versions(store)] == [1]


# -- determinism, manifests, lineage -----------------------------------------------------------------
def test_two_stores_from_the_same_data_hold_identical_tensors(tmp_path):
    rows = make_people(20, seed=2)
    a = train_store(tmp_path / "a", rows, *SLICES).store
    b = train_store(tmp_path / "b", rows, *SLICES).store
    assert sum(len(checkpoints.shard_slices(a, s)) for s in range(a.num_shards)) >= 4  # several slices were trained
    _assert_same_checkpoints(a, b)


def test_manifests_hash_every_file_and_lineage_holds_keyed_hashes_only(tmp_path, make_trained_store):
    rows = make_people(20, seed=3)
    store = make_trained_store(rows, *SLICES).store
    raw_ids = [r["record_id"] for r in rows]
    found = all_checkpoints(store)
    assert found
    for (shard, sl), (cid,) in sorted(found.items()):
        folder = checkpoint_dir(store, cid)
        manifest = json.loads((folder / checkpoints.MANIFEST).read_text())
        assert manifest["checkpoint_id"] == cid
        assert (manifest["shard_id"], manifest["slice_idx"]) == (shard, sl)
        assert cid.startswith(f"s{shard:05d}-l{sl:06d}-")
        # Every file but the manifest is listed with its sha256, and the hashes match.
        on_disk = set(os.listdir(folder)) - {checkpoints.MANIFEST}
        assert set(manifest["files"]) == on_disk
        assert {
            "adapter_model.safetensors",
            "adapter_config.json",
            "optimizer.safetensors",
            checkpoints.LINEAGE,
        } <= on_disk
        for name, sha in manifest["files"].items():
            assert checkpoints._sha256_file(str(folder / name)) == sha, name
        for key in (
            "config_fingerprint",
            "training_fingerprint",
            "base_model_fingerprint",
            "library_versions",
            "lineage_digest",
        ):
            assert manifest[key], key
        # The parent is this shard's previous slice; the lineage digest chains over keyed hashes.
        parent = manifest["parent_checkpoint_id"]
        if sl == 0:
            assert parent is None
        else:
            assert parent == found[(shard, sl - 1)][0]
        slice_rows = store.read_slice(shard, sl, columns=["record_id", "content_sha256"])
        slice_ids = slice_rows["record_id"].to_pylist()
        lineage = pq.read_table(folder / checkpoints.LINEAGE)
        assert lineage.column_names == ["record_hash", "content_hash"]
        assert sorted(lineage["record_hash"].to_pylist()) == sorted(store.hash_ids(slice_ids))
        content = checkpoints.content_hashes(store, slice_ids, slice_rows["content_sha256"].to_pylist())
        assert sorted(lineage["content_hash"].to_pylist()) == sorted(content)
        assert not set(content) & set(store.hash_ids(slice_ids))  # never mistaken for an id hash
        parent_digest = None if parent is None else checkpoints.read_manifest(store, shard, parent)["lineage_digest"]
        assert manifest["lineage_digest"] == checkpoints.lineage_digest(
            parent_digest, store.hash_ids(slice_ids) + content
        )
        # No raw record id anywhere in the checkpoint: not in the lineage values, not in any file.
        assert not set(raw_ids) & set(lineage["record_hash"].to_pylist())
        for name in on_disk | {checkpoints.MANIFEST}:
            data = (folder / name).read_bytes()
            leaked = [r for r in raw_ids if r.encode() in data]
            assert not leaked, f"{cid}/{name} holds raw record ids {leaked[:3]}"

    # sha256 is checked on load: one flipped byte makes the checkpoint unusable.
    cid = next(iter(serving_shards(store).values()))
    target = checkpoint_dir(store, cid) / "adapter_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="damaged"):
        checkpoints.open_checkpoint(store, cid)


def test_checkpoints_load_with_peft(tmp_path, make_trained_store):
    from peft import PeftModel

    from sisa.model.base import load_base_model

    cfg = make_cfg(tmp_path / "s", *SLICES)
    store = make_trained_store(make_people(6, seed=4), *SLICES).store
    for cid in serving_shards(store).values():
        base, _ = load_base_model(cfg.model)
        model = PeftModel.from_pretrained(base, str(checkpoint_dir(store, cid)))
        loaded = {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
        assert_tensors_equal(loaded, adapter_tensors(store, cid), f"{cid} through PeftModel.from_pretrained")


def test_train_says_what_its_shards_cost_against_one_adapter(tmp_path, capfd):
    rows = make_people(10, seed=4)  # 20 records: 4 shards of a few records, one adapter of 3 slices
    extra = [*SLICES, "sharding.num_shards=4", "training.min_steps_per_slice=auto"]  # the default (tiny.yaml: 0)
    sharded = cli_args(tmp_path / "four", *extra)
    ingest_rows(make_cfg(tmp_path / "four", *extra), rows, tmp_path / "input" / "people.jsonl")
    capfd.readouterr()
    code, out, err = run_cli("train", "--json", *sharded, capfd=capfd)
    assert code == 0, err
    report = json.loads(out)
    trained = sum(s["steps"] for r in report["trained"] for s in r["slices"])
    cost = report["cost"]
    # auto leaves no shard short, so nothing is said on stderr.
    assert cost["too_few_steps"] == [] and "warning" not in err
    assert cost["records"] == 20 and cost["optimizer_steps"] == trained  # a first training is from scratch

    # One adapter trained on the same records takes the steps the sharded store predicted for it.
    one_extra = [*SLICES, "sharding.num_shards=1", "training.min_steps_per_slice=auto"]
    one_cfg = make_cfg(tmp_path / "one", *one_extra)
    ingest_rows(one_cfg, rows, tmp_path / "input" / "one.jsonl")
    capfd.readouterr()
    code, out, err = run_cli("train", *cli_args(tmp_path / "one", *one_extra), capfd=capfd)
    assert code == 0, err
    one = Store.open(one_cfg.store.uri)
    one_steps = sum(
        checkpoints.read_manifest(one, shard, cid)["steps"] for (shard, _), (cid,) in all_checkpoints(one).items()
    )
    assert cost["one_adapter_steps"] == one_steps
    assert cost["ratio"] == pytest.approx(trained / one_steps) and trained > one_steps  # small shards, each its floor
    # The text output says it after the table, with the numbers.
    lines = out.splitlines()
    assert lines[-1] == (
        f"training cost: {one_steps} optimizer steps over every shard from scratch; "
        f"one adapter on the same 20 records: {one_steps} (1.00x its cost)"
    )
    assert "committed model version 1" in lines[-2]


def test_train_warns_when_its_own_min_steps_leave_shards_short(tmp_path, capfd):
    rows = make_people(10, seed=4)  # 4 shards of about 5 records: 2 steps of 4 a pass, under auto's 3
    extra = [*SLICES, "sharding.num_shards=4", "training.min_steps_per_slice=0"]
    ingest_rows(make_cfg(tmp_path / "s", *extra), rows, tmp_path / "input" / "people.jsonl")
    capfd.readouterr()
    code, out, err = run_cli("train", "--json", *cli_args(tmp_path / "s", *extra), capfd=capfd)
    assert code == 0, err
    cost = json.loads(out)["cost"]
    short = cost["too_few_steps"]
    trained = {r["shard_id"]: sum(s["steps"] for s in r["slices"]) for r in json.loads(out)["trained"]}
    assert short and all(s["fewest_steps_per_pass"] < 3 and s["steps"] == trained[s["shard_id"]] for s in short)
    assert cost["auto_steps"] > cost["optimizer_steps"]
    fewest = min(short, key=lambda s: s["fewest_steps_per_pass"])
    assert (
        f"warning: with training.min_steps_per_slice=0, {len(short)} of 4 shards train fewer than 3 "
        f"optimizer steps a pass over a slice (shard {fewest['shard_id']}: {fewest['steps']} steps, "
        f"{fewest['fewest_steps_per_pass']:.1f} a pass)"
    ) in err
    assert f"training.min_steps_per_slice=auto would train {cost['auto_steps']} steps" in err
    # A minimum of the user's own that gives every slice its steps is not warned about.
    enough = [*SLICES, "sharding.num_shards=4", "training.min_steps_per_slice=3"]
    ingest_rows(make_cfg(tmp_path / "t", *enough), rows, tmp_path / "input" / "again.jsonl")
    capfd.readouterr()
    code, out, err = run_cli("train", *cli_args(tmp_path / "t", *enough), capfd=capfd)
    assert code == 0 and "warning" not in err, err


def test_min_steps_per_slice_gives_a_small_shard_its_steps(tmp_path):
    rows = make_people(3, seed=4)  # 6 records over 2 shards: one or two batches of 4 a slice
    plain = train_store(tmp_path / "plain", rows, *SLICES).store
    cfg = make_cfg(tmp_path / "min" / "s", *SLICES, "training.min_steps_per_slice=5", "serving.aggregation=uniform")
    ingest_rows(cfg, rows, tmp_path / "min" / "input" / "people.jsonl")
    res = train.run(cfg)
    store = Store.open(cfg.store.uri)
    steps = {(r.shard_id, s.slice_idx): s.steps for r in res.trained for s in r.slices}
    assert steps and all(n == 5 for n in steps.values()), steps  # 5 batches of 4 over a few records
    for (shard, sl), (cid,) in all_checkpoints(store).items():
        assert checkpoints.read_manifest(store, shard, cid)["steps"] == steps[(shard, sl)]
    # Without the minimum the same slices took fewer steps (the minimum is what made them 5).
    for (shard, _sl), (cid,) in all_checkpoints(plain).items():
        assert checkpoints.read_manifest(plain, shard, cid)["steps"] < 5
    assert versions.current(store).aggregation == "uniform"
    # The minimum is part of the training fingerprint: another value refuses to continue.
    ingest_rows(cfg, make_people(2, seed=4, start=100), tmp_path / "min" / "input" / "more.jsonl")
    with pytest.raises(RefusedError, match="different training config"):
        train.run(make_cfg(tmp_path / "min" / "s", *SLICES, "training.min_steps_per_slice=6"))


def test_a_changed_chat_template_refuses_to_continue_training(tmp_path, monkeypatch):
    """Records already trained were rendered with the old template: continuing with a new one
    would mix two renderings in one adapter, which no replay reproduces."""
    from sisa.model import base as model_module

    cfg = make_cfg(tmp_path / "s", *SLICES)
    ingest_rows(cfg, make_people(5, seed=2), tmp_path / "input" / "a.jsonl")
    train.run(cfg)
    store = Store.open(cfg.store.uri)
    (shard, _), (cid,) = next(iter(all_checkpoints(store).items()))
    recorded = checkpoints.read_manifest(store, shard, cid)["tokenizer_fingerprint"]
    ingest_rows(cfg, make_people(3, seed=2, start=50), tmp_path / "input" / "b.jsonl")
    before = store.current_version()
    monkeypatch.setattr(model_module, "TINY_CHAT_TEMPLATE", model_module.TINY_CHAT_TEMPLATE.replace("<|", "<<|"))
    with pytest.raises(ShardJobError, match="another tokenizer or chat template") as err:
        train.run(cfg)
    assert recorded[:12] in err.value.message
    assert Store.open(cfg.store.uri).current_version() == before  # nothing committed
    monkeypatch.undo()
    assert train.run(cfg).model_version == before + 1  # the template restored, training goes on


# -- incremental training and MLflow --------------------------------------------------------------------
def test_incremental_training_reuses_untouched_shards_and_mlflow_follows(tmp_path):
    from sisa.serving.tracking import Tracker

    cfg = make_cfg(tmp_path / "s", *SLICES, tracking=True)
    ingest_rows(cfg, people_in_shards(5, 2, {0, 1}, 16, start=0), tmp_path / "input" / "a.jsonl")
    r1 = train.run(cfg)
    assert r1.model_version == 1
    store = Store.open(cfg.store.uri)
    v1 = serving_shards(store)
    assert set(v1) == {0, 1}

    # MLflow: a run with params and tags, a registered version, the alias on it.
    tracker = Tracker(cfg.tracking, str(tmp_path / "s"))
    client = tracker.client
    assert tracker.uri == f"sqlite:///{(tmp_path / 's' / 'mlflow.db').resolve()}"
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], "tags.model_version = '1'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["reason"] == "train"
    assert run.data.params["config_fingerprint"] == cfg.fingerprint()
    assert run.data.params["training_fingerprint"] == cfg.training_fingerprint()
    assert run.data.params["num_shards"] == "2" and run.data.params["base_model"] == "tiny"
    assert {"shard_0_loss", "shard_1_loss", "wall_time_s"} <= set(run.data.metrics)
    reg1 = tracker.find_registered_version(1)
    assert reg1 is not None
    mv = client.get_model_version(cfg.tracking.registered_model, reg1)
    assert mv.run_id == run.info.run_id and mv.tags["model_version"] == "1"
    alias = client.get_model_version_by_alias(cfg.tracking.registered_model, cfg.tracking.alias)
    assert str(alias.version) == reg1 and tracker.serving_version() == 1
    assert versions.current(store).mlflow["registered_version"] == reg1
    # No alias is "no serving version", not an error (MLflow reports it as a bad parameter).
    client.delete_registered_model_alias(cfg.tracking.registered_model, cfg.tracking.alias)
    assert tracker.serving_version() is None
    tracker.set_serving_alias(1)
    assert tracker.serving_version() == 1

    # New people for shard 0 only: shard 0 trains its new slices, shard 1 is reused as is.
    shard1_before = tree_digest(tmp_path / "s" / "checkpoints" / "shard=00001")
    shard0_before = tree_digest(tmp_path / "s" / "checkpoints" / "shard=00000")
    sealed0 = checkpoints.slice_of(v1[0])
    ingest_rows(cfg, people_in_shards(6, 2, {0}, 6, start=500), tmp_path / "input" / "b.jsonl")
    assert max(checkpoints.shard_slices(store, 0)) > sealed0 and max(
        checkpoints.shard_slices(store, 1)
    ) == checkpoints.slice_of(v1[1])
    r2 = train.run(cfg)
    assert r2.model_version == 2
    assert [r.shard_id for r in r2.trained] == [0]
    assert [s.slice_idx for s in r2.trained[0].slices] == list(
        range(sealed0 + 1, max(checkpoints.shard_slices(store, 0)) + 1)
    )
    assert r2.reused == {1: v1[1]}
    v2 = versions.current(store)
    assert v2.model_version == 2 and v2.parent == 1
    assert v2.shards[1] == v1[1]
    assert tree_digest(tmp_path / "s" / "checkpoints" / "shard=00001") == shard1_before
    # Shard 0's earlier checkpoints are untouched too; the new chain continues from v1's.
    after0 = tree_digest(tmp_path / "s" / "checkpoints" / "shard=00000")
    assert {k: v for k, v in after0.items() if k in shard0_before} == shard0_before
    assert checkpoints.read_manifest(store, 0, v2.shards[0])["slice_idx"] == max(checkpoints.shard_slices(store, 0))
    first_new = [c for c in checkpoints.checkpoint_ids(store, 0) if checkpoints.slice_of(c) == sealed0 + 1]
    assert checkpoints.read_manifest(store, 0, first_new[0])["parent_checkpoint_id"] == v1[0]

    # Continuing slice by slice gives the bytes of training every slice at once.
    replay = tmp_path / "replay"
    train_shard(
        ShardTask(
            store.uri,
            cfg.to_dict(),
            0,
            tuple(range(max(checkpoints.shard_slices(store, 0)) + 1)),
            None,
            replay_dir=str(replay),
        )
    )
    assert_tensors_equal(
        adapter_tensors(store, v2.shards[0]),
        load_tensors(replay / "shard=00000" / "adapter_model.safetensors"),
        "incremental vs at once",
    )

    # MLflow: version 2 registered, the alias moved, version 1 still registered.
    reg2 = tracker.find_registered_version(2)
    assert reg2 is not None and reg2 != reg1
    assert tracker.serving_version() == 2
    assert tracker.find_registered_version(1) == reg1
    runs2 = client.search_runs([exp.experiment_id], "tags.model_version = '2'")
    assert len(runs2) == 1 and runs2[0].data.metrics.get("shards_trained") == 1.0


# -- Ray ---------------------------------------------------------------------------------------------
def test_ray_and_serial_backends_give_identical_tensors(tmp_path, ray_backend):
    rows = make_people(20, seed=6)
    on_ray = train_store(tmp_path / "ray", rows, *SLICES, backend=ray_backend).store
    serial = train_store(tmp_path / "serial", rows, *SLICES, backend="serial").store
    _assert_same_checkpoints(on_ray, serial)


# -- failures and refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["serial", "ray"])
def test_a_failed_shard_job_names_the_shard_and_commits_nothing(tmp_path, backend, request):
    if backend == "ray":
        backend = request.getfixturevalue("ray_backend")
    cfg = make_cfg(tmp_path / "s", *SLICES, backend=backend)
    ingest_rows(cfg, make_people(12, seed=7), tmp_path / "input" / "a.jsonl")
    assert train.run(cfg).model_version == 1
    store = Store.open(cfg.store.uri)
    ingest_rows(cfg, people_in_shards(8, 2, {0, 1}, 8, start=300), tmp_path / "input" / "b.jsonl")
    # Damage the newest slice part of shard 1: its job fails, shard 0's job succeeds.
    part = store.slice_parts(1, max(checkpoints.shard_slices(store, 1)))[-1]
    Path(store.fs.full(part)).write_bytes(b"this is not a parquet file")
    serving_before = tree_digest(tmp_path / "s" / "versions"), (tmp_path / "s" / layout.CURRENT).read_bytes()

    with pytest.raises(ShardJobError) as info:
        train.run(cfg)
    assert info.value.shard_ids == [1]
    assert "shard_id 1" in info.value.message
    # No partial version: the ledger and the pointer are exactly as before.
    assert (tree_digest(tmp_path / "s" / "versions"), (tmp_path / "s" / layout.CURRENT).read_bytes()) == serving_before
    assert store.current_version() == 1
    assert [v.model_version for v in versions.all_versions(store)] == [1]


def test_train_refuses_while_a_deletion_request_is_open(tmp_path, capfd, monkeypatch):
    cfg = make_cfg(tmp_path / "s", *SLICES)
    rows = make_people(10, seed=8)
    ingest_rows(cfg, rows, tmp_path / "input" / "a.jsonl")
    train.run(cfg)
    store = Store.open(cfg.store.uri)
    # A forget that crashes right after its ledger entry leaves an open request.
    calls = {"n": 0}

    def crash(*a, **k):
        calls["n"] += 1
        raise RuntimeError("simulated crash before the data is deleted")

    monkeypatch.setattr(erasure, "erase_records", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        forget.run(cfg, "subject", [rows[0]["subject_id"]], quiet=True)
    monkeypatch.undo()
    (req,) = ledgers.list_requests(store.fs)
    assert req["status"] == "received" and calls["n"] == 1
    ingest_rows_path = tmp_path / "input" / "more.jsonl"
    before = tree_digest(tmp_path / "s")

    with pytest.raises(RefusedError, match=req["request_id"]):
        train.run(cfg)
    capfd.readouterr()
    code, _, err = run_cli("train", *cli_args(tmp_path / "s", *SLICES), capfd=capfd)
    assert code == RefusedError.exit_code
    assert req["request_id"] in err and "forget --resume" in err
    with pytest.raises(RefusedError, match=req["request_id"]):
        ingest_rows(cfg, make_people(2, seed=9, start=900), ingest_rows_path)
    assert tree_digest(tmp_path / "s") == before

    # Once the request completes, training runs again.
    (done,) = forget.resume(cfg, quiet=True)
    assert done["request"]["status"] == "completed"
    assert train.run(cfg).noop


def test_resuming_from_a_checkpoint_is_exact_with_dropout(tmp_path):
    """Slice by slice from checkpoints equals one run from scratch with LoRA dropout 0.1: every
    slice reseeds torch from (seed, shard, slice), so no RNG state needs to travel in a checkpoint.
    Dropout really acts: the same run without it gives other weights."""
    cfg = make_cfg(tmp_path / "s", "sharding.num_shards=1", "sharding.slice_size=6", "lora.dropout=0.1")
    ingest_rows(cfg, make_people(9, seed=31), tmp_path / "p.jsonl")
    store = Store.open(cfg.store.uri)
    last = max(checkpoints.shard_slices(store, 0))
    assert last >= 2
    parent = None
    for sl in range(last + 1):  # one shard job per slice: each resumes from the previous checkpoint
        parent = train_shard(ShardTask(store.uri, cfg.to_dict(), 0, (sl,), parent)).last_checkpoint_id
    at_once = tmp_path / "at-once"
    train_shard(ShardTask(store.uri, cfg.to_dict(), 0, tuple(range(last + 1)), None, replay_dir=str(at_once)))
    stepwise = adapter_tensors(store, parent)
    assert_tensors_equal(
        stepwise,
        load_tensors(at_once / "shard=00000" / "adapter_model.safetensors"),
        "resumed vs at once (dropout 0.1)",
    )
    no_dropout = make_cfg(tmp_path / "s", "sharding.num_shards=1", "sharding.slice_size=6", "lora.dropout=0.0")
    plain = tmp_path / "plain"
    train_shard(ShardTask(store.uri, no_dropout.to_dict(), 0, tuple(range(last + 1)), None, replay_dir=str(plain)))
    other = load_tensors(plain / "shard=00000" / "adapter_model.safetensors")
    assert any(not torch.equal(stepwise[k], other[k]) for k in stepwise)
