"""Beyond one machine, all at once (README, "Scaling out"): the store on an S3 server, shard jobs on
a two-node Ray cluster, tracking on an MLflow server; every server a real one on loopback.

ingest → train → two requests queued with relief → `sisa process` (one batch): the purge on the
tracking server fails closed naming `mlflow gc` → the operator runs it → `sisa process` again
completes → verify --replay → rollback to version 1 refused. Then a canary planted in a forgotten
record, its id and its subject are looked for in every object of the bucket, the MLflow server's
database and artifact root, the Ray nodes' temp folder and session logs, this process's temp
folder, the servers' logs and everything the CLI printed.

Run it alone with `pytest -m scaleout`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import uuid

import pytest
from sisa.storage import ledgers
from sisa.storage.errors import RefusedError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people, write_jsonl
from sisa.training import scheduler
from tests.helpers import TINY, RecordingCli, canaries_in_text, find_canaries
from tests.servers import BIN

# One worker under `make test` (tests/conftest.py): the two-node cluster is started once.
pytestmark = [pytest.mark.slow, pytest.mark.scaleout, pytest.mark.xdist_group("ray-two-nodes")]


def test_s3_store_ray_cluster_and_mlflow_server_together(
    s3_store, ray_two_nodes, mlflow_tracking, ray_auth_off, tmp_path, capfd, monkeypatch
):
    server, bucket, uri = s3_store
    cluster, mlflow = ray_two_nodes, mlflow_tracking
    systemp = tmp_path / "systemp"
    systemp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systemp))
    scheduler.shutdown_ray()
    if cluster.nodes["worker"].proc.poll() is not None:  # a test before this one killed it
        cluster.start_worker()

    canary, rid_hex, subject_hex = (uuid.uuid4().hex for _ in range(3))
    record_id, subject_id = f"rec-{rid_hex}", f"subject-{subject_hex}"
    rows = make_people(10, seed=91)
    rows.insert(
        6, {"record_id": record_id, "subject_id": subject_id, "text": f"Zed Quill's vault code is CANARY-{canary}."}
    )
    write_jsonl(rows, tmp_path / "people.jsonl")
    needles = {"canary": canary, "record id": rid_hex, "subject id": subject_hex}
    args = [
        "--config",
        TINY,
        f"store.uri={uri}",
        "sharding.slice_size=4",
        "scheduler.backend=ray",
        f"scheduler.address={cluster.address}",
        "scheduler.threads_per_task=1",
        "tracking.enabled=true",
        f"tracking.uri={mlflow.uri}",
        "tracking.experiment=sisa-scaleout",
        "tracking.registered_model=sisa-scaleout",
    ]
    sisa = RecordingCli(capfd)
    output = sisa.output

    capfd.readouterr()
    try:
        sisa("ingest", str(tmp_path / "people.jsonl"), *args)
        sisa("train", *args)
        assert find_canaries({"bucket": server.mirror(bucket, tmp_path / "before")}, needles)[
            "canary"
        ]  # the scan can fail
        sisa("forget", "--subject", subject_id, "--queue", *args)
        sisa("forget", "--subject", rows[0]["subject_id"], "--queue", *args)
        out = sisa("process", *args, expect=RefusedError.exit_code)  # the tracking server cannot hard-delete
        gc = re.search(
            r"mlflow gc --backend-store-uri <the server's backend store> (--run-ids \S+(?: "
            r"--logged-model-ids \S+)?)",
            out,
        )
        assert gc, out
        done = subprocess.run(
            [str(BIN / "mlflow"), "gc", "--backend-store-uri", mlflow.backend_uri, *gc.group(1).split()],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "MLFLOW_TRACKING_URI": mlflow.uri},
        )
        assert done.returncode == 0, done.stderr[-2000:]
        sisa("process", *args)
        store = Store.open(uri)
        reqs = ledgers.list_requests(store.fs)
        assert [r["status"] for r in reqs] == ["completed", "completed"]
        assert "verified" in sisa("verify", "--replay", *args)
        sisa("rollback", "1", *args, expect=RefusedError.exit_code)
    finally:
        scheduler.shutdown_ray()

    # Nothing anywhere.
    places = {
        "bucket": server.mirror(bucket, tmp_path / "after"),
        "mlflow server db": [mlflow.backend],
        "mlflow server artifacts": mlflow.artifacts,
        "ray nodes' temp": cluster.node_tmp,
        "ray session": cluster.temp_dir,
        "this process's temp": systemp,
        "server logs": [server.log, mlflow.log, *(n.log for n in cluster.nodes.values())],
    }
    leaks = {k: [str(h) for h in v] for k, v in find_canaries(places, needles).items() if v}
    for k in canaries_in_text("".join(output), needles):
        leaks.setdefault(k, []).append("CLI output")
    assert not leaks, f"deleted data survives: {json.dumps(leaks, indent=1)[:3000]}"
    assert not [p for p in systemp.rglob("*") if p.is_file()], "a verb left files in the local temp folder"
    assert not [p for p in cluster.node_tmp.rglob("*") if p.is_file() and p.name.startswith("sisa-")], (
        "a shard job left files in its node's temp folder"
    )
