"""SIGKILL the real `sisa` process at every fault-injection stage, then recover with the CLI.

`SISA_FAULT=<stage>` (storage/faults.py) makes the process kill itself with SIGKILL at that stage:
no cleanup, no finally blocks, the store lock left behind, exactly like a power cut or the OOM
killer. Afterwards, each test checks what the README promises ("Crashes"):
- the process really died by SIGKILL (return code -9), at the stage named;
- the serving version is intact (its checkpoints byte-identical, sha256-verified by
  `sisa verify`) and loads (`sisa generate`);
- nothing half-written is read (`sisa status` shows only committed records, nothing sees a
  version that never became current);
- the work resumes: `sisa forget --resume` completes the request, `sisa train` finishes the
  training, and `sisa verify --replay` proves the result exact;
- `sisa gc` removes the leftovers and reports them.
Training runs on the serial backend, so the `sisa` process itself is the one that dies.
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest
from sisa.storage import layout, ledgers
from sisa.storage.store import Store

from sisa.data.synthetic import write_jsonl
from sisa.lineage import checkpoints, versions
from sisa.training import run as training
from tests.helpers import cli_args, make_cfg, run_cli, tree_digest
from tests.reliability.helpers import (
    SLICES,
    describe,
    live_ids,
    people,
    requests_of,
    sisa_proc,
    status,
    subject_in_middle,
)

KILLED = -signal.SIGKILL


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def assert_killed(proc) -> None:
    assert proc.returncode == KILLED, f"the process should have died by SIGKILL at the fault stage; {describe(proc)}"


def serving_state(root: Path) -> tuple[int | None, dict[str, str]]:
    """The current version and the exact bytes of every checkpoint it serves."""
    store = Store.open(str(root))
    current = versions.current(store)
    digest: dict[str, str] = {}
    for shard, cid in versions.shard_checkpoints(current).items():
        rel = layout.checkpoint_dir(shard, cid)
        for name, sha in tree_digest(store.fs.full(rel)).items():
            digest[f"{rel}/{name}"] = sha
    return (current.model_version if current else None), digest


def assert_serves_and_loads(root: Path) -> None:
    code, out, err = run_cli("verify", *cli_args(root, *SLICES))
    assert code == 0 and "integrity  ok" in out, out + err
    code, out, err = run_cli(
        "generate", "--prompt", "Ada Lane works as a", "--max-new-tokens", "3", *cli_args(root, *SLICES)
    )
    assert code == 0 and out.startswith("Ada Lane works as a"), out + err


def assert_exact(root: Path) -> None:
    code, out, err = run_cli("verify", "--replay", *cli_args(root, *SLICES))
    assert code == 0, out + err
    assert "verified" in out and "identical (torch.equal)" in out, out


def new_people(tmp_path: Path, n: int = 10, start: int = 500) -> Path:
    """Records of people the template store has never seen."""
    return write_jsonl(people(n, seed=3, start=start), tmp_path / f"more-{start}.jsonl")


# -- ingest ---------------------------------------------------------------------------------------------
def test_killed_ingest_is_invisible_gc_removes_its_parts_and_it_can_be_redone(trained_store, tmp_path):
    root = trained_store
    before = status(root)
    serving_before = serving_state(root)
    more = new_people(tmp_path)

    proc = sisa_proc("ingest", str(more), *cli_args(root, *SLICES), SISA_FAULT="ingest-after-parts")
    assert_killed(proc)
    # The killed ingest wrote data parts (the stage is after them) and left its lock behind.
    parts = sorted(str(p.relative_to(root)) for p in (root / layout.DATA).rglob("*.parquet"))
    orphan_parts = [p for p in parts if not any(e["ingest_id"] in p for e in before["ingests"])]
    assert orphan_parts, "the killed ingest should have written its data parts"
    lock = json.loads((root / layout.LOCK).read_text())
    assert lock["purpose"] == "ingest" and not pid_alive(lock["pid"])

    # Nothing of it is visible: same records, same ingests, same serving version.
    after = status(root)
    assert (after["records"], after["ingests"], after["current_version"]) == (
        before["records"],
        before["ingests"],
        before["current_version"],
    )
    assert not {r["record_id"] for r in people(10, seed=3, start=500)} & live_ids(root)
    assert serving_state(root) == serving_before
    assert_serves_and_loads(root)

    # gc reports exactly the uncommitted parts and removes them (taking over the stale lock).
    code, out, err = run_cli("gc", "--json", *cli_args(root, *SLICES))
    assert code == 0, err
    report = json.loads(out)
    assert report["orphans"] == orphan_parts and report["removed"] and report["bytes_freed"] > 0
    assert not any((root / p).exists() for p in orphan_parts)
    assert not (root / layout.LOCK).exists()

    # Re-ingesting the same file works as if the crash never happened.
    code, out, err = run_cli("ingest", str(more), *cli_args(root, *SLICES))
    assert code == 0 and "ingested 20 record(s)" in out, out + err
    assert status(root)["records"] == before["records"] + 20
    assert {r["record_id"] for r in people(10, seed=3, start=500)} <= live_ids(root)
    code, out, err = run_cli("train", *cli_args(root, *SLICES))
    assert code == 0 and "committed model version 2" in out, out + err
    assert_exact(root)


def test_a_killed_ingest_leaves_no_slice_for_train_to_pick_up(trained_store, tmp_path):
    root = trained_store
    store = Store.open(str(root))
    slices_before = {s: checkpoints.shard_slices(store, s) for s in range(store.num_shards)}
    assert_killed(
        sisa_proc("ingest", str(new_people(tmp_path)), *cli_args(root, *SLICES), SISA_FAULT="ingest-after-parts")
    )
    store = Store.open(str(root))
    assert {s: checkpoints.shard_slices(store, s) for s in range(store.num_shards)} == slices_before
    tasks, _ = training.plan_tasks(store, make_cfg(root, *SLICES))
    assert tasks == [], (
        f"nothing was committed, so nothing should train; planned {[(t.shard_id, t.slices) for t in tasks]}"
    )


def test_gc_reports_and_removes_what_a_write_cut_short_leaves(trained_store):
    """A kill in the middle of an atomic write leaves a staged file under tmp/ (StoreFS) or a
    staging folder (a checkpoint being written); neither is ever read, and gc removes both."""
    root = trained_store
    assert_serves_and_loads(root)
    tmp = root / layout.TMP
    tmp.mkdir(exist_ok=True)
    staged = tmp / f"{uuid.uuid4().hex}.CURRENT.tmp"
    staged.write_bytes(b'{"model_version": 9')  # cut short mid-write
    staging = tmp / "sisa-ckpt-cut-short"
    staging.mkdir()
    (staging / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    state = serving_state(root)
    assert state[0] == 1  # the half-written pointer is never read

    code, out, err = run_cli("gc", *cli_args(root, *SLICES))
    assert code == 0, err
    assert f"removed tmp/{staged.name}" in out and "removed tmp/sisa-ckpt-cut-short" in out, out
    assert "2 orphan(s)" in out
    assert not staged.exists() and not staging.exists()
    assert serving_state(root) == state
    code, out, _ = run_cli("gc", "--dry-run", *cli_args(root, *SLICES))
    assert code == 0 and "0 orphan(s)" in out


# -- train ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", ["train-between-slices", "pointer-move"])
def test_killed_training_leaves_the_serving_version_and_training_finishes(trained_store, tmp_path, stage):
    root = trained_store
    code, out, err = run_cli("ingest", str(new_people(tmp_path, n=12)), *cli_args(root, *SLICES))
    assert code == 0, err
    serving_before = serving_state(root)
    versions_before = tree_digest(root / layout.VERSIONS)

    proc = sisa_proc("train", *cli_args(root, *SLICES), SISA_FAULT=stage)
    assert_killed(proc)
    store = Store.open(str(root))
    if stage == "train-between-slices":
        # A checkpoint of the first pending slice was saved; no version was written.
        assert tree_digest(root / layout.VERSIONS) == versions_before
    else:
        # The new version entry is written, the pointer never moved to it.
        assert [v.model_version for v in versions.all_versions(store)] == [1, 2]
    assert store.current_version() == 1
    assert serving_state(root) == serving_before
    assert_serves_and_loads(root)
    assert status(root)["current_version"] == 1

    code, out, err = run_cli("train", *cli_args(root, *SLICES))
    assert code == 0 and "it now serves" in out, out + err
    assert Store.open(str(root)).current_version() == (2 if stage == "train-between-slices" else 3)
    code, out, err = run_cli("gc", *cli_args(root, *SLICES))
    assert code == 0 and "0 orphan(s)" in out, out + err
    assert_exact(root)


def _ancestors(root: Path, checkpoint_id: str) -> set[str]:
    from sisa.lineage import checkpoints

    store = Store.open(str(root))
    out = set()
    cid = checkpoints.read_manifest(store, checkpoints.shard_of(checkpoint_id), checkpoint_id).get(
        "parent_checkpoint_id"
    )
    while cid:
        out.add(cid)
        cid = checkpoints.read_manifest(store, checkpoints.shard_of(cid), cid).get("parent_checkpoint_id")
    return out


# -- forget ---------------------------------------------------------------------------------------------
# stage -> the request's status when the process died
FORGET_STAGES = {
    "forget-after-ledger": "received",
    "forget-after-delete": "data_deleted",
    "forget-during-retrain": "retraining",
    "pointer-move": "retraining",
    "forget-during-purge": "retraining",
}


@pytest.mark.parametrize("stage", FORGET_STAGES)
def test_killed_forget_keeps_serving_and_resumes_to_an_exact_result(trained_store, stage):
    root = trained_store
    store = Store.open(str(root))
    subject, shard, _ = subject_in_middle(store)
    gone = {r["record_id"] for r in store.index.table.to_pylist() if r["subject_id"] == subject}
    serving_before = serving_state(root)
    other_shards = {s: c for s, c in versions.shard_checkpoints(versions.current(store)).items() if s != shard}
    checkpoints_before = set(checkpoints.checkpoint_ids(store, shard))

    proc = sisa_proc("forget", "--subject", subject, *cli_args(root, *SLICES), SISA_FAULT=stage)
    assert_killed(proc)

    # The request survived the kill: in the ledger, open, naming exactly the records (by hash).
    (req,) = requests_of(root)
    assert req["status"] == FORGET_STAGES[stage]
    assert req["id_hashes"] == sorted(store.hash_ids(sorted(gone)))
    assert status(root)["open_requests"] == [req["request_id"]]
    if stage in ("forget-after-ledger",):
        assert gone <= live_ids(root)
    else:
        assert not gone & live_ids(root)

    # The serving version: untouched until the exact version is committed, then the new one.
    store = Store.open(str(root))
    if stage == "forget-during-purge":
        assert store.current_version() == 2 and req["versions"]["exact"] == 2
        retrained = set(checkpoints.checkpoint_ids(store, shard)) - checkpoints_before
        purged_already = checkpoints_before - set(checkpoints.checkpoint_ids(store, shard))
        assert retrained and len(purged_already) == 1, "killed after the first of several tainted checkpoints"
    else:
        assert "exact" not in req["versions"]
        assert serving_state(root) == serving_before
        if stage == "pointer-move":
            assert [v.model_version for v in versions.all_versions(store)] == [1, 2]
            assert store.current_version() == 1
    assert_serves_and_loads(root)

    # Nothing else may run until the request is finished.
    code, _, err = run_cli("train", *cli_args(root, *SLICES))
    assert code == 6 and "forget --resume" in err

    code, out, err = run_cli("forget", "--resume", *cli_args(root, *SLICES))
    assert code == 0 and f"resuming {req['request_id']}" in out, out + err
    (done,) = requests_of(root)
    assert done["status"] == "completed"
    assert done["certificate"]["lineage_check"]["passed"] and done["certificate"]["purge_check"]["passed"]
    assert not gone & live_ids(root)
    after = versions.shard_checkpoints(versions.current(Store.open(str(root))))
    assert {s: c for s, c in after.items() if s != shard} == other_shards  # isolation survives the crash
    # Of the shard's old checkpoints only the clean ancestors of the new one are left.
    assert checkpoints_before & set(checkpoints.checkpoint_ids(Store.open(str(root)), shard)) <= _ancestors(
        root, after[shard]
    )
    code, out, err = run_cli("forget", "--resume", *cli_args(root, *SLICES))
    assert code == 0 and "no open requests" in out

    code, out, err = run_cli("gc", *cli_args(root, *SLICES))
    assert code == 0 and "0 orphan(s)" in out, out + err
    assert_exact(root)
    assert not os.path.exists(root / layout.LOCK)
    assert ledgers.read_current(Store.open(str(root)).fs) == Store.open(str(root)).current_version()
