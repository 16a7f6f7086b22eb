"""`sisa forget` end to end: exactness, isolation, rollback guard, idempotency, validation,
selectors, dry run, crash and resume, the approximate fast path and isolation.

THE EXACTNESS TEST is `test_forget_equals_training_from_scratch_on_the_remaining_data`: after a
deletion, every shard's adapter is tensor for tensor (torch.equal) the adapter that a second,
independent store trains from the remaining records alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sisa.pipelines import forget, rollback, train
from sisa.pipelines import verify as verify_pipeline
from sisa.pipelines import versions as versions_pipeline
from sisa.storage import ledgers
from sisa.storage.errors import RefusedError, ValidationError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.data.synthetic_formats import as_format
from sisa.forgetting import erasure, purge
from sisa.lineage import checkpoints, versions
from sisa.serving import engine as serving
from sisa.training import scheduler
from sisa.training.shard_job import ShardTask, train_shard
from tests.helpers import cli_args, ingest_rows, make_cfg, run_cli, train_store, tree_digest
from tests.pipelines.helpers import (
    adapter_tensors,
    all_checkpoints,
    assert_tensors_equal,
    chain,
    checkpoint_dir,
    layout_of,
    load_tensors,
    optimizer_tensors,
    serving_shards,
)

SLICES = ["sharding.slice_size=8"]


def _subject_in_middle_slice(store: Store) -> tuple[str, int, int]:
    """A subject whose records all sit in one slice that is neither the first nor the last of its
    shard: (subject_id, shard_id, slice_idx)."""
    rows = store.index.table.to_pylist()
    where: dict[str, set[tuple[int, int]]] = {}
    for r in rows:
        where.setdefault(r["subject_id"], set()).add((r["shard_id"], r["slice_idx"]))
    candidates = []
    for subject, places in sorted(where.items()):
        if len(places) == 1:
            ((shard, sl),) = places
            if 0 < sl < max(checkpoints.shard_slices(store, shard)):
                candidates.append((subject, shard, sl))
    assert candidates, "the data should give some subject a middle slice"
    return candidates[len(candidates) // 2]


def _verify(cfg, request_id: str | None = None, replay: bool = True) -> dict:
    return verify_pipeline.run(cfg, request_id, replay)


# -- exactness and isolation ---------------------------------------------------------------------------
def _train_slice_by_slice(root: Path, rows: list[dict], slice_of: dict[str, int], *extra: str) -> Store:
    """A second, independent store trained from scratch on `rows`, reproducing the first store's
    slice layout: the records of slice k of every shard are ingested, then trained (which seals
    the slice, shortened or not), for k = 0, 1, ... Arrival order within a shard is preserved."""
    cfg = make_cfg(root / "s", *SLICES, *extra)
    for k in range(max(slice_of.values()) + 1):
        batch = [r for r in rows if slice_of[r["record_id"]] == k]
        assert batch
        ingest_rows(cfg, batch, root / "input" / f"slice-{k}.jsonl")
        train.run(cfg)
    return Store.open(cfg.store.uri)


@pytest.mark.parametrize(
    ("mode", "num_shards", "subjects", "min_steps", "record_format"),
    [
        ("cumulative", 2, 1, 0, "text"),
        ("incremental", 2, 1, 0, "text"),
        ("cumulative", 3, 2, 0, "text"),
        ("cumulative", 2, 1, 6, "text"),
        ("cumulative", 2, 1, "auto", "text"),
        ("incremental", 3, 2, "auto", "text"),
        ("cumulative", 2, 1, 0, "chat"),
        ("incremental", 2, 1, 0, "prompt-completion"),
    ],
    ids=[
        "cumulative",
        "incremental",
        "two-shards-of-three",
        "min-steps-per-slice",
        "min-steps-auto",
        "incremental-auto-two-shards",
        "cumulative-chat",
        "incremental-prompt-completion",
    ],
)
def test_forget_equals_training_from_scratch_on_the_remaining_data(
    tmp_path, mode, num_shards, subjects, min_steps, record_format
):
    rows = as_format(make_people(40, seed=11), record_format)  # 80 records, slices of 8: several slices a shard
    extra = [
        f"sharding.slice_mode={mode}",
        f"sharding.num_shards={num_shards}",
        f"training.min_steps_per_slice={min_steps}",
    ]
    cfg, store = train_store(tmp_path / "a", rows, *SLICES, *extra)
    picked = [_subject_in_middle_slice(store)]
    if subjects == 2:  # and a second subject in another shard: two shards retrain in one request
        other = sorted(
            {(r["shard_id"], r["subject_id"]) for r in store.index.table.to_pylist()} - {(picked[0][1], picked[0][0])}
        )
        other = [o for o in other if o[0] != picked[0][1]]
        index = {r["subject_id"]: r["slice_idx"] for r in store.index.table.to_pylist()}
        shard2, subject2 = other[len(other) // 2]
        picked.append((subject2, shard2, index[subject2]))
    subject_names = [p[0] for p in picked]
    affected = {p[1] for p in picked}
    gone = {r["record_id"] for r in rows if r["subject_id"] in subject_names}
    slice_of = {r["record_id"]: r["slice_idx"] for r in store.index.table.to_pylist()}
    earliest = {}
    for rid in gone:
        shard = {r["record_id"]: r["shard_id"] for r in store.index.table.to_pylist()}[rid]
        earliest[shard] = min(earliest.get(shard, 10**9), slice_of[rid])
    before = versions.current(store)
    before_chains = {s: chain(store, before.shards[s]) for s in affected}
    before_ckpts = tree_digest(tmp_path / "a" / "s" / "checkpoints")
    layout_before = layout_of(store)

    res = forget.run(cfg, "ids", sorted(gone), quiet=True)
    req = res["request"]
    assert req["status"] == "completed" and req["mode"] == "exact"
    assert {p["shard_id"]: p["earliest_slice"] for p in req["plan"]["shards"]} == earliest
    assert req["certificate"]["lineage_check"]["passed"] and req["certificate"]["purge_check"]["passed"]
    after = versions.current(store)
    assert after.model_version == 2 and after.reason == "forget" and after.request_id == req["request_id"]
    assert sorted(r["shard_id"] for r in req["retrained"]) == sorted(affected)

    # The records are physically gone from the data, and nothing else moved.
    assert not gone & set(store.index.table["record_id"].to_pylist())
    expected_layout = {k: [i for i in v if i not in gone] for k, v in layout_before.items()}
    assert layout_of(store) == expected_layout

    def files_of(digest: dict[str, str], prefix: str) -> dict[str, str]:
        return {k: v for k, v in digest.items() if k.startswith(prefix)}

    after_ckpts = tree_digest(tmp_path / "a" / "s" / "checkpoints")
    for shard in range(num_shards):
        prefix = f"shard={shard:05d}"
        if shard not in affected:
            # Isolation: every checkpoint of an unaffected shard is byte-identical and reused.
            assert after.shards[shard] == before.shards[shard]
            assert files_of(after_ckpts, prefix) == files_of(before_ckpts, prefix)
            continue
        # The affected shard restarts from the checkpoint before its earliest hit slice (reused
        # byte for byte); every checkpoint from there on is new and the tainted ones are gone.
        before_chain, after_chain = before_chains[shard], chain(store, after.shards[shard])
        assert sorted(after_chain) == sorted(before_chain)
        for sl in sorted(before_chain):
            if sl < earliest[shard]:
                assert after_chain[sl] == before_chain[sl]
                ckpt = f"{prefix}/{before_chain[sl]}"
                assert files_of(after_ckpts, ckpt) == files_of(before_ckpts, ckpt)
            else:
                assert after_chain[sl] != before_chain[sl]
                assert not checkpoint_dir(store, before_chain[sl]).exists()
                assert before_chain[sl] in req["purge"]["checkpoints"]
    assert versions.all_versions(store)[0].status == "purged"

    # THE EXACTNESS CHECK: an independent store trained from scratch on the remaining records
    # holds the same adapter (and optimizer state) in every shard, tensor for tensor.
    remaining = [r for r in rows if r["record_id"] not in gone]
    scratch = _train_slice_by_slice(tmp_path / "b", remaining, slice_of, *extra)
    assert layout_of(scratch) == layout_of(store)
    got, want = serving_shards(store), serving_shards(scratch)
    assert sorted(got) == sorted(want) == list(range(num_shards))
    for s in sorted(got):
        assert checkpoints.slice_of(got[s]) == checkpoints.slice_of(want[s])
        assert_tensors_equal(
            adapter_tensors(store, got[s]), adapter_tensors(scratch, want[s]), f"{mode}: shard {s} adapter"
        )
        assert_tensors_equal(
            optimizer_tensors(store, got[s]), optimizer_tensors(scratch, want[s]), f"{mode}: shard {s} optimizer"
        )

    # And a from-scratch replay inside the first store (one job over every slice) agrees too.
    replay = tmp_path / "replay"
    for shard in sorted(affected):
        train_shard(
            ShardTask(
                store.uri,
                cfg.to_dict(),
                shard,
                tuple(range(checkpoints.slice_of(got[shard]) + 1)),
                None,
                replay_dir=str(replay),
            )
        )
        replayed = load_tensors(replay / f"shard={shard:05d}" / "adapter_model.safetensors")
        assert_tensors_equal(adapter_tensors(store, got[shard]), replayed, f"{mode}: shard {shard} replay")


@pytest.mark.parametrize("record_format", ["text", "chat"])
def test_verify_replay_proves_the_forget_exact(tmp_path, make_trained_store, capfd, record_format):
    cfg, store = make_trained_store(as_format(make_people(24, seed=12), record_format), *SLICES)
    subject, _, _ = _subject_in_middle_slice(store)
    req = forget.run(cfg, "subject", [subject], quiet=True)["request"]
    report = _verify(cfg, req["request_id"], True)
    assert report["passed"], report
    assert report["replay"] and all(v["identical"] for v in report["replay"].values())
    full = _verify(cfg, None, True)  # every completed request, every shard replayed
    assert full["passed"] and set(full["replay"]) == {str(s) for s in serving_shards(store)}
    capfd.readouterr()
    code, out, _ = run_cli("verify", req["request_id"], "--replay", *cli_args(tmp_path / "s", *SLICES), capfd=capfd)
    assert code == 0 and "verified" in out

    # Damage the serving adapter of the affected shard: verify must fail, not shrug.
    cid = serving_shards(store)[req["plan"]["shards"][0]["shard_id"]]
    target = checkpoint_dir(store, cid) / "adapter_model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0x01
    target.write_bytes(bytes(data))
    assert not _verify(cfg, req["request_id"], False)["passed"]


# -- rollback --------------------------------------------------------------------------------------------
def test_rollback_refuses_a_version_trained_on_deleted_records(tmp_path, make_trained_store, capfd):
    rows = make_people(12, seed=13)
    cfg, store = make_trained_store(rows, *SLICES)
    req = forget.run(cfg, "subject", [rows[0]["subject_id"]], quiet=True)["request"]
    assert store.current_version() == 2
    with pytest.raises(RefusedError, match=req["request_id"]):
        rollback.run(cfg, 1)
    capfd.readouterr()
    code, _, err = run_cli("rollback", "1", *cli_args(tmp_path / "s", *SLICES), capfd=capfd)
    assert code == RefusedError.exit_code and req["request_id"] in err
    assert store.current_version() == 2


def test_rollback_to_a_clean_version_moves_pointer_and_alias(tmp_path, make_trained_store):
    from sisa.serving.tracking import Tracker

    cfg, store = make_trained_store(make_people(10, seed=14), *SLICES, tracking=True)
    later = make_people(6, seed=14, start=100)
    ingest_rows(cfg, later, tmp_path / "input" / "later.jsonl")
    assert train.run(cfg).model_version == 2
    # Forget someone who arrived after version 1: version 2 is tainted, version 1 is clean.
    req = forget.run(cfg, "subject", [later[0]["subject_id"]], quiet=True)["request"]
    assert store.current_version() == 3
    tracker = Tracker(cfg.tracking, str(tmp_path / "s"))
    assert tracker.serving_version() == 3
    assert tracker.find_registered_version(2) is None  # the purge removed it from MLflow too

    with pytest.raises(RefusedError, match=req["request_id"]):
        rollback.run(cfg, 2)
    assert rollback.run(cfg, 1) == {"previous": 3, "current": 1}
    assert store.current_version() == 1 and tracker.serving_version() == 1
    assert rollback.run(cfg, 3)["current"] == 3 and tracker.serving_version() == 3


# -- idempotency and validation -----------------------------------------------------------------------------
def test_replaying_a_request_and_deleting_deleted_ids_are_noops(tmp_path, make_trained_store, capfd):
    rows = make_people(12, seed=15)
    cfg, store = make_trained_store(rows, *SLICES)
    subject = rows[0]["subject_id"]
    ids = [r["record_id"] for r in rows if r["subject_id"] == subject]
    first = forget.run(cfg, "subject", [subject], quiet=True)["request"]
    assert first["status"] == "completed" and first["records"] == len(ids) == 2
    state = tree_digest(tmp_path / "s")

    replay = forget.run(cfg, "subject", [subject], quiet=True)  # the same request again
    assert replay["noop"] and replay["missing"] == 0
    again = forget.run(cfg, "ids", ids, quiet=True)  # the ids it deleted
    assert again["noop"] and again["already_deleted"] == 2 and again["missing"] == 0
    assert forget.run(cfg, "ids", ids[:1], quiet=True)["noop"]
    args = cli_args(tmp_path / "s", *SLICES)
    capfd.readouterr()
    for flags in (["--subject", subject], ["--ids", ",".join(ids)]):
        code, out, _ = run_cli("forget", *flags, *args, capfd=capfd)
        assert code == 0 and "no-op" in out, flags
    assert tree_digest(tmp_path / "s") == state
    assert len(ledgers.list_requests(store.fs)) == 1

    # A deleted id beside a live one: only the live one is forgotten.
    live = rows[2]["record_id"]
    mixed = forget.run(cfg, "ids", [ids[0], live], quiet=True)["request"]
    assert mixed["records"] == 1 and mixed["status"] == "completed"
    assert mixed["id_hashes"] == [store.hash_id(live)]


def test_unknown_ids_are_named_and_change_nothing(tmp_path, make_trained_store, capfd):
    rows = make_people(12, seed=16)
    cfg, store = make_trained_store(rows, *SLICES)
    known = rows[0]["record_id"]
    state = tree_digest(tmp_path / "s")

    with pytest.raises(ValidationError) as info:
        forget.run(cfg, "ids", [known, "nobody-1", "nobody-2"], quiet=True)
    assert "nobody-1" in info.value.message and "nobody-2" in info.value.message and "2 unknown" in info.value.message
    assert known not in info.value.message
    many = [f"ghost-{i:03d}" for i in range(25)]
    with pytest.raises(ValidationError) as info:
        forget.run(cfg, "ids", many, quiet=True)
    assert (
        "25 unknown" in info.value.message
        and "ghost-019" in info.value.message
        and "ghost-020" not in info.value.message
    )
    assert "and 5 more" in info.value.message
    with pytest.raises(ValidationError, match="no-such-subject"):
        forget.run(cfg, "subject", ["no-such-subject"], quiet=True)
    capfd.readouterr()
    code, _, err = run_cli("forget", "--ids", f"{known},nobody-1", *cli_args(tmp_path / "s", *SLICES), capfd=capfd)
    assert code == ValidationError.exit_code and "nobody-1" in err and "--allow-missing" in err
    assert tree_digest(tmp_path / "s") == state
    assert known in store.index.table["record_id"].to_pylist()

    # --allow-missing skips them and forgets the rest.
    code, out, err = run_cli(
        "forget",
        "--ids",
        f"{known},nobody-1",
        "--allow-missing",
        "--json",
        *cli_args(tmp_path / "s", *SLICES),
        capfd=capfd,
    )
    assert code == 0, err
    req = json.loads(out)["request"]
    assert req["status"] == "completed" and req["records"] == 1 and req["missing_skipped"] == 1
    assert known not in store.index.table["record_id"].to_pylist()


def test_an_empty_selection_is_an_error(tmp_path, make_trained_store, capfd):
    cfg, _ = make_trained_store(make_people(6, seed=17), *SLICES)
    state = tree_digest(tmp_path / "s")
    for values in ([], [""], ["  ", ""]):
        with pytest.raises(ValidationError, match="selects nothing"):
            forget.run(cfg, "ids", values, quiet=True)
    args = cli_args(tmp_path / "s", *SLICES)
    capfd.readouterr()
    code, _, err = run_cli("forget", "--ids", ",", *args, capfd=capfd)
    assert code == ValidationError.exit_code and "selects nothing" in err
    code, _, err = run_cli("forget", *args, capfd=capfd)
    assert code == ValidationError.exit_code and "--ids" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = run_cli("forget", "--ids-file", str(empty), *args, capfd=capfd)
    assert code == ValidationError.exit_code and "selects nothing" in err
    assert tree_digest(tmp_path / "s") == state


# -- selectors and dry run ---------------------------------------------------------------------------------
def test_every_selector_forgets_what_it_names(tmp_path, capfd):
    cfg = make_cfg(tmp_path / "s", *SLICES)
    main_rows = make_people(10, seed=18)
    extra_rows = make_people(3, seed=18, start=1000)
    batch_rows = make_people(3, seed=18, start=2000)
    ingest_rows(cfg, main_rows, tmp_path / "input" / "people.jsonl")
    ingest_rows(cfg, extra_rows, tmp_path / "input" / "crm-export.jsonl")
    batch_id = ingest_rows(cfg, batch_rows, tmp_path / "input" / "bad-batch.jsonl")
    train.run(cfg)
    store = Store.open(cfg.store.uri)
    args = cli_args(tmp_path / "s", *SLICES)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{main_rows[4]['record_id']}\n\n{main_rows[5]['record_id']}\n")
    cases = [
        (
            ["--ids", f"{main_rows[0]['record_id']},{main_rows[1]['record_id']}"],
            "ids",
            {main_rows[0]["record_id"], main_rows[1]["record_id"]},
        ),
        (["--ids-file", str(ids_file)], "ids", {main_rows[4]["record_id"], main_rows[5]["record_id"]}),
        (
            ["--subject", main_rows[8]["subject_id"]],
            "subject",
            {r["record_id"] for r in main_rows if r["subject_id"] == main_rows[8]["subject_id"]},
        ),
        (["--source", "crm-export.jsonl"], "source", {r["record_id"] for r in extra_rows}),
        (["--ingest-id", batch_id], "ingest_id", {r["record_id"] for r in batch_rows}),
    ]
    capfd.readouterr()
    for flags, kind, expect in cases:
        live_before = set(store.index.table["record_id"].to_pylist())
        assert expect <= live_before
        code, out, err = run_cli("forget", *flags, "--json", *args, capfd=capfd)
        assert code == 0, (flags, err)
        req = json.loads(out)["request"]
        assert req["status"] == "completed" and req["selector"]["kind"] == kind and req["records"] == len(expect), flags
        assert sorted(req["id_hashes"]) == sorted(store.hash_ids(sorted(expect)))
        assert set(store.index.table["record_id"].to_pylist()) == live_before - expect, flags
        on_disk = set()
        for shard in range(store.num_shards):
            for sl in checkpoints.shard_slices(store, shard):
                t = store.read_slice(shard, sl, columns=["record_id"])
                on_disk |= set() if t is None else set(t["record_id"].to_pylist())
        assert not on_disk & expect, flags
    assert len(ledgers.list_requests(store.fs)) == len(cases)
    code, out, _ = run_cli("requests", "--json", *args, capfd=capfd)
    assert code == 0 and [r["status"] for r in json.loads(out)] == ["completed"] * len(cases)


def test_dry_run_changes_nothing_and_predicts_the_plan(tmp_path, make_trained_store, capfd):
    rows = make_people(30, seed=19)
    cfg, store = make_trained_store(rows, *SLICES)
    subject, shard, sl = _subject_in_middle_slice(store)
    state = tree_digest(tmp_path / "s")
    dry = forget.run(cfg, "subject", [subject], dry_run=True, quiet=True)
    assert dry["dry_run"]
    plan = dry["plan"]
    assert plan["records"] == 2 and [(p["shard_id"], p["earliest_slice"]) for p in plan["shards"]] == [(shard, sl)]
    assert plan["unaffected_shards"] == [s for s in range(store.num_shards) if s != shard]
    assert 0 < plan["cost_fraction"] < 1
    capfd.readouterr()
    code, out, _ = run_cli("forget", "--subject", subject, "--dry-run", *cli_args(tmp_path / "s", *SLICES), capfd=capfd)
    assert code == 0 and "dry run, nothing changed" in out and "retrain cost" in out
    assert tree_digest(tmp_path / "s") == state
    real = forget.run(cfg, "subject", [subject], quiet=True)["request"]
    assert real["plan"] == plan


# -- crash and resume ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crash_at", ["delete", "retrain", "purge"])
def test_an_interrupted_request_resumes_and_completes_exactly(
    tmp_path, make_trained_store, monkeypatch, capfd, crash_at
):
    rows = make_people(24, seed=20)
    cfg, store = make_trained_store(rows, *SLICES)
    subject, shard, _ = _subject_in_middle_slice(store)
    gone = {r["record_id"] for r in rows if r["subject_id"] == subject}
    v1 = serving_shards(store)
    target = {
        "delete": (erasure, "erase_records"),
        "retrain": (scheduler, "run_shard_jobs"),
        "purge": (purge, "purge"),
    }[crash_at]
    real = getattr(*target)
    calls = {"n": 0}

    def crash_once(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError(f"simulated crash at {crash_at}")
        return real(*a, **k)

    monkeypatch.setattr(*target, crash_once)
    with pytest.raises(RuntimeError, match="simulated crash"):
        forget.run(cfg, "subject", [subject], quiet=True)
    (req,) = ledgers.list_requests(store.fs)
    assert req["status"] == {"delete": "received", "retrain": "retraining", "purge": "retraining"}[crash_at]
    assert req["errors"] and "RuntimeError" in req["errors"][0]["error"]
    # The request was written before anything was destroyed; the ledger holds hashes only.
    assert req["id_hashes"] == sorted(store.hash_ids(sorted(gone)))
    assert not [g for g in gone if g in json.dumps(req)]
    if crash_at == "delete":
        assert gone <= set(store.index.table["record_id"].to_pylist())
    if crash_at in ("delete", "retrain"):
        # The previous serving version is intact and loads (sha256 verified).
        assert store.current_version() == 1
        for cid in v1.values():
            checkpoints.open_checkpoint(store, cid)
    with pytest.raises(RefusedError, match=req["request_id"]):
        forget.run(cfg, "subject", [rows[-1]["subject_id"]], quiet=True)
    with pytest.raises(RefusedError, match=req["request_id"]):
        train.run(cfg)

    if crash_at == "purge":  # through the CLI once: `sisa forget --resume`
        capfd.readouterr()
        code, out, err = run_cli("forget", "--resume", "--json", *cli_args(tmp_path / "s", *SLICES), capfd=capfd)
        assert code == 0, err
        assert [r["request_id"] for r in json.loads(out)] == [req["request_id"]]
    else:
        (done,) = forget.resume(cfg, quiet=True)
        assert done["request_id"] == req["request_id"]
    final = ledgers.read_request(store.fs, req["request_id"])
    assert final["status"] == "completed"
    assert final["certificate"]["lineage_check"]["passed"] and final["certificate"]["purge_check"]["passed"]
    assert forget.resume(cfg, quiet=True) == []
    assert not gone & set(store.index.table["record_id"].to_pylist())
    after = serving_shards(store)
    assert {s: c for s, c in after.items() if s != shard} == {s: c for s, c in v1.items() if s != shard}
    # The resumed result is the from-scratch result.
    replay = tmp_path / "replay"
    train_shard(
        ShardTask(
            store.uri,
            cfg.to_dict(),
            shard,
            tuple(range(checkpoints.slice_of(after[shard]) + 1)),
            None,
            replay_dir=str(replay),
        )
    )
    assert_tensors_equal(
        adapter_tensors(store, after[shard]),
        load_tensors(replay / f"shard={shard:05d}" / "adapter_model.safetensors"),
        f"resumed after {crash_at}",
    )


def test_resume_after_a_tracking_failure_registers_the_exact_version_and_moves_the_alias(
    tmp_path, make_trained_store, monkeypatch
):
    from sisa.serving.tracking import Tracker

    rows = make_people(12, seed=22)
    cfg, store = make_trained_store(rows, *SLICES, tracking=True)
    real = Tracker.log_model_version
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated MLflow outage")
        return real(self, *a, **k)

    monkeypatch.setattr(Tracker, "log_model_version", flaky)
    with pytest.raises(RuntimeError, match="MLflow outage"):
        forget.run(cfg, "subject", [rows[0]["subject_id"]], quiet=True)
    (done,) = forget.resume(cfg, quiet=True)
    assert done["request"]["status"] == "completed"
    exact = done["request"]["versions"]["exact"]
    assert store.current_version() == exact
    tracker = Tracker(cfg.tracking, str(tmp_path / "s"))
    assert tracker.find_registered_version(exact) is not None
    assert tracker.serving_version() == exact


# -- fast paths --------------------------------------------------------------------------------------------------
# A config that memorizes: few people, many epochs, LoRA on every projection.
MEMORIZE = [
    "training.epochs=20",
    "lora.r=8",
    "lora.target_modules=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "sharding.slice_size=16",
]


def _answer_loss(store: Store, cfg, shards: dict[int, str], rows: list[dict]) -> float:
    ens = serving.load_ensemble(store, cfg, shards)
    losses, _ = serving.score_records(
        ens, [r["text"] for r in rows], [r["prompt"] for r in rows], cfg.training.max_length
    )
    return serving.mean(losses)


def test_fast_path_serves_an_approximate_version_then_the_exact_one(tmp_path, monkeypatch):
    rows = make_people(8, seed=3)
    cfg = make_cfg(tmp_path / "s", *MEMORIZE)
    ingest_rows(cfg, rows, tmp_path / "input" / "people.jsonl")
    train.run(cfg)
    store = Store.open(cfg.store.uri)
    index = {r["record_id"]: r["shard_id"] for r in store.index.table.to_pylist()}
    subject = rows[0]["subject_id"]
    forgotten = [r for r in rows if r["subject_id"] == subject]
    shard = index[forgotten[0]["record_id"]]
    retained = [r for r in rows if r["subject_id"] != subject and index[r["record_id"]] == shard]
    assert retained
    v1 = serving_shards(store)
    forget_before = _answer_loss(store, cfg, v1, forgotten)
    retain_before = _answer_loss(store, cfg, v1, retained)

    # Watch the moment the exact retrain starts: the approximate version must already serve.
    seen: dict = {}
    real = scheduler.run_shard_jobs

    def spy(*a, **k):
        current = versions.current(store)
        (req,) = ledgers.list_requests(store.fs)
        seen.update(version=current, status=req["status"])
        seen["forget"] = _answer_loss(store, cfg, versions.shard_checkpoints(current), forgotten)
        seen["retain"] = _answer_loss(store, cfg, versions.shard_checkpoints(current), retained)
        return real(*a, **k)

    monkeypatch.setattr(scheduler, "run_shard_jobs", spy)
    req = forget.run(cfg, "subject", [subject], fast=True, quiet=True)["request"]

    approx = seen["version"]
    assert approx.model_version == 2 and approx.approximate is True and approx.reason == "forget-fast"
    assert seen["status"] != "completed"
    assert {s: c for s, c in versions.shard_checkpoints(approx).items() if s != shard} == {
        s: c for s, c in v1.items() if s != shard
    }
    approx_ckpt = approx.shards[shard]
    assert approx_ckpt != v1[shard]
    # The approximate step measurably raises the forgotten records' loss; the retained records move less.
    assert seen["forget"] > forget_before
    assert abs(seen["retain"] - retain_before) < seen["forget"] - forget_before
    assert req["evidence"]["loss_fast_path"] > req["evidence"]["loss_before"]

    # The request completes only after the exact path; the approximate version is purged.
    assert req["status"] == "completed" and req["versions"] == {"approximate": 2, "exact": 3}
    listed = {v["model_version"]: v for v in versions_pipeline.run(cfg)["versions"]}
    assert (
        listed[2]["approximate"] is True
        and listed[2]["status"] == "purged"
        and listed[2]["purged_by"] == req["request_id"]
    )
    assert listed[3]["approximate"] is False and listed[3]["status"] == "active"
    assert store.current_version() == 3
    assert approx_ckpt in req["purge"]["checkpoints"]
    assert not checkpoint_dir(store, approx_ckpt).exists()
    assert approx_ckpt not in {c for cs in all_checkpoints(store).values() for c in cs}
    with pytest.raises(RefusedError):
        rollback.run(cfg, 2)


def test_isolate_serves_the_unaffected_shards_until_the_exact_version(tmp_path, make_trained_store, monkeypatch):
    rows = make_people(12, seed=21)
    cfg, store = make_trained_store(rows, *SLICES)
    subject = rows[0]["subject_id"]
    shard = {r["record_id"]: r["shard_id"] for r in store.index.table.to_pylist()}[rows[0]["record_id"]]
    v1 = serving_shards(store)
    seen: dict = {}
    real = scheduler.run_shard_jobs

    def spy(*a, **k):
        seen["version"] = versions.current(store)
        return real(*a, **k)

    monkeypatch.setattr(scheduler, "run_shard_jobs", spy)
    req = forget.run(cfg, "subject", [subject], isolate=True, quiet=True)["request"]

    iso = seen["version"]
    assert iso.model_version == 2 and iso.excluded_shards == [shard] and iso.approximate is False
    assert versions.shard_checkpoints(iso) == {s: c for s, c in v1.items() if s != shard}
    assert req["status"] == "completed" and req["versions"] == {"isolate": 2, "exact": 3}
    exact = versions.current(store)
    assert exact.model_version == 3 and sorted(versions.shard_checkpoints(exact)) == sorted(v1)
    # The isolating version never held the records: it stays restorable.
    assert ledgers.read_version(store.fs, 2)["status"] == "active"
    assert ledgers.read_version(store.fs, 1)["status"] == "purged"
