"""The store on an S3-compatible server (README, "Scaling out"): every verb against a real S3 API
(moto's standalone server on 127.0.0.1), then a canary scan of every object in the bucket and a
check that no verb left anything in the local temp folder.

`store.uri=s3://BUCKET/store?endpoint_override=127.0.0.1:PORT&scheme=http`, credentials from the
AWS environment variables (tests/conftest.py sets them for the loopback server).
"""

from __future__ import annotations

import json
import tempfile
import uuid

import pytest
from sisa.storage import layout, ledgers
from sisa.storage.errors import RefusedError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people, write_jsonl
from tests.helpers import TINY, RecordingCli, canaries_in_text, find_canaries


def test_every_verb_runs_on_an_s3_store_and_leaves_nothing_behind(s3_store, tmp_path, capfd, monkeypatch):
    server, bucket, uri = s3_store
    # The system temp dir of this process is a fresh folder, so what the verbs leave there is
    # theirs alone (other programs on the machine write to /tmp too).
    systemp = tmp_path / "systemp"
    systemp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(systemp))
    canary, rid_hex = uuid.uuid4().hex, uuid.uuid4().hex
    record_id = f"rec-{rid_hex}"
    rows = make_people(10, seed=61)
    rows.insert(
        5,
        {
            "record_id": record_id,
            "subject_id": f"subject-{rid_hex}",
            "text": f"Zed Quill's vault code is CANARY-{canary}.",
        },
    )
    inputs = tmp_path / "input"
    inputs.mkdir()
    write_jsonl(rows, inputs / "people.jsonl")
    args = [
        "--config",
        TINY,
        f"store.uri={uri}",
        "scheduler.backend=serial",
        "tracking.enabled=false",
        "deletion.relief=false",
        "sharding.slice_size=4",
    ]
    needles = {"canary": canary, "record id": rid_hex}
    sisa = RecordingCli(capfd)
    output = sisa.output

    capfd.readouterr()
    sisa("ingest", str(inputs / "people.jsonl"), *args)
    sisa("train", *args)
    sisa("status", *args)
    # Positive control: the scan finds the canary in the bucket before the forget.
    before = find_canaries({"bucket": server.mirror(bucket, tmp_path / "before")}, needles)
    assert before["canary"] and any(h.how == "parquet" for h in before["canary"])

    sisa("forget", "--ids", record_id, *args)
    store = Store.open(uri)
    (req,) = ledgers.list_requests(store.fs)
    assert req["status"] == "completed" and store.current_version() == 2
    assert "verified" in sisa("verify", req["request_id"], "--replay", *args)
    assert str(req["request_id"]) in sisa("rollback", "1", *args, expect=RefusedError.exit_code)
    assert store.current_version() == 2

    # Only the store's own objects, no temporary copies (S3 PUTs are atomic: written in place).
    keys = server.keys(bucket)
    assert keys and all(k.startswith("store/") for k in keys)
    assert not [k for k in keys if k.startswith(f"store/{layout.TMP}/") or k.endswith(".tmp")], keys
    assert "store/LOCK" not in keys  # every verb released its lease
    assert tempfile.gettempdir() == str(systemp)
    left = sorted(str(p.relative_to(systemp)) for p in systemp.rglob("*") if not p.is_dir())
    assert left == [], "a verb left files in the local temp folder"
    # torch creates its (unused, empty) compile-cache folder there on import; nothing else may.
    assert all(p.name.startswith("torchinductor_") for p in systemp.iterdir()), sorted(systemp.iterdir())

    leaks = {
        k: [str(h) for h in v]
        for k, v in find_canaries({"bucket": server.mirror(bucket, tmp_path / "after")}, needles).items()
        if v
    }
    for k in canaries_in_text("".join(output), needles):
        leaks.setdefault(k, []).append("CLI output")
    assert not leaks, f"deleted data survives in the bucket: {json.dumps(leaks, indent=1)[:3000]}"


def test_on_s3_objects_go_to_their_key_and_a_checkpoint_exists_only_by_its_manifest(s3_store):
    """No temporary copies in the bucket; a checkpoint whose writer died before its manifest
    (written last) is never read as a checkpoint."""
    from sisa.storage.errors import NotFoundError

    from sisa.lineage import checkpoints

    server, bucket, uri = s3_store
    store = Store.create(uri, num_shards=2, seed=0)
    store.fs.write_json("versions/v000001.json", {"model_version": 1})
    objects = [k for k in server.keys(bucket) if not k.endswith("/")]  # less pyarrow's folder markers
    assert objects == ["store/secret.key", "store/store.json", "store/versions/v000001.json"]
    cid = checkpoints.make_checkpoint_id(0, 0, None, "lineage", "training", "base")
    store.fs.write_bytes(f"{layout.checkpoint_dir(0, cid)}/{checkpoints.ADAPTER_WEIGHTS}", b"half of a checkpoint")
    with pytest.raises(NotFoundError):
        checkpoints.open_checkpoint(store, cid)
    assert checkpoints.parents(store) == {}
