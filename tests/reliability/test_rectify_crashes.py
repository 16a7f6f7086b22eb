"""A rectification killed (SIGKILL) at each stage keeps the serving version, and `sisa forget
--resume` finishes it to the exact result: the new text staged in the store survives the kill,
the old content ends up in no serving lineage, and replay proves the serving version equals
training on the corrected data."""

from __future__ import annotations

import signal

import pytest
from sisa.storage import layout
from sisa.storage.store import Store

from sisa.data.synthetic import write_jsonl
from sisa.lineage import checkpoints, requests_ledger, versions
from tests.helpers import cli_args, run_cli
from tests.reliability.helpers import (
    SLICES,
    requests_of,
    sisa_proc,
    subject_in_middle,
)

STAGES = {"forget-after-ledger": "received", "forget-after-delete": "data_deleted", "forget-during-purge": "retraining"}


@pytest.mark.parametrize("stage", STAGES)
def test_killed_rectify_resumes_to_the_corrected_exact_result(trained_store, tmp_path, stage):
    root = trained_store
    store = Store.open(str(root))
    subject, shard, _ = subject_in_middle(store)
    (row, *_) = [r for r in store.index.table.to_pylist() if r["subject_id"] == subject]
    old_hash = checkpoints.content_hashes(store, [row["record_id"]], [row["content_sha256"]])[0]
    fix = write_jsonl(
        [{"record_id": row["record_id"], "text": "Corrected Person works as a baker."}], tmp_path / "fix.jsonl"
    )

    proc = sisa_proc("rectify", "--file", str(fix), *cli_args(root, *SLICES), SISA_FAULT=stage)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (req,) = requests_of(root)
    assert (req["kind"], req["status"]) == ("rectify", STAGES[stage])
    # The staged new text is there until the slice files hold it.
    assert Store.open(str(root)).fs.exists(layout.correction_file(req["request_id"])) == (
        stage == "forget-after-ledger"
    )
    if stage != "forget-during-purge":
        assert Store.open(str(root)).current_version() == 1

    code, out, err = run_cli("forget", "--resume", *cli_args(root, *SLICES))
    assert code == 0 and f"resuming {req['request_id']}" in out, out + err
    store = Store.open(str(root))
    (done,) = requests_ledger.all_requests(store)
    assert done.status.value == "completed" and done.certificate["lineage_check"]["passed"]
    assert done.certificate["rectification"]["new_content_check"]["passed"]
    serving = versions.current(store)
    held = set().union(*(checkpoints.full_lineage(store, c) for c in serving.shards.values()))
    assert old_hash not in held
    texts = store.read_slice(row["shard_id"], row["slice_idx"])
    assert "Corrected Person works as a baker." in texts["text"].to_pylist()
    code, out, err = run_cli("verify", "--replay", *cli_args(root, *SLICES))
    assert code == 0 and "verified" in out, out + err
