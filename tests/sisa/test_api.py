"""The Python API as a notebook drives it: `import sisa`, then the whole lifecycle on the tiny model
(configs/tiny.yaml, serial backend, no tracking), asserting what each step did to the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sisa.storage.errors import RefusedError, ValidationError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _write(rows: list[dict], path: Path) -> Path:
    """The people as a CRM export would hold them: the data subject in `customer_id`."""
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps({"record_id": r["record_id"], "customer_id": r["subject_id"], "text": r["text"]}) + "\n")
    return path


def test_import_sisa_loads_nothing_heavy() -> None:
    heavy = "{'torch', 'ray', 'mlflow', 'peft', 'transformers'}"
    code = f"import sys, sisa; print({heavy} & set(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "set()"


def test_the_lifecycle_through_import_sisa(tmp_path: Path) -> None:
    from sisa.storage.keys import keyed_hashes, load_key
    from sisa.storage.store import Store

    import sisa
    from sisa.data import make_people
    from sisa.forgetting import lineage_check
    from sisa.lineage import checkpoints, versions

    first, second = make_people(10, seed=1), make_people(6, seed=1, start=10)
    store = sisa.open(
        tmp_path / "s",
        config="configs/tiny.yaml",
        **{"scheduler.backend": "serial", "tracking.enabled": False, "training.epochs": 1},
    )
    assert isinstance(store, sisa.SisaStore) and store.uri == str(tmp_path / "s")

    # ingest and train twice: version 1 on the first file, version 2 on both
    (ingested,) = store.ingest(_write(first, tmp_path / "first.jsonl"), subject_field="customer_id")
    assert ingested.records == len(first) and sum(ingested.shards.values()) == len(first)
    assert store.train().model_version == 1
    store.ingest(_write(second, tmp_path / "second.jsonl"), subject_field="customer_id")
    assert store.train().model_version == 2

    # bad input: named, nothing changed
    with pytest.raises(ValidationError, match="person-99999"):
        store.forget(ids=["person-99999-job"])
    with pytest.raises(ValidationError, match="exactly one of"):
        store.forget(ids=["x"], subject="y")
    assert store.requests() == []

    # forget one person of the second file, with the approximate bridge first
    subject = second[0]["subject_id"]
    gone = [r["record_id"] for r in second if r["subject_id"] == subject]
    seen: list[str] = []
    result = store.forget(subject=subject, fast=True, on_version=lambda kind, v: seen.append(kind))
    request = result.request
    assert request is not None and request.status.value == "completed" and request.records == len(gone)
    assert seen == ["approximate", "exact"]

    # the records are gone from the index, and from every lineage that may serve
    opened = Store.open(store.uri)
    assert not set(gone) & set(opened.index.table["record_id"].to_pylist())
    hashes = set(keyed_hashes(load_key(opened.fs), gone))
    kept = set(keyed_hashes(load_key(opened.fs), [r["record_id"] for r in first]))
    restorable = [v for v in store.versions() if v.status.value != "purged"]
    assert restorable and store.serving_version().model_version == max(v.model_version for v in restorable)
    for v in restorable:
        for cid in versions.shard_checkpoints(v).values():
            lineage = checkpoints.full_lineage(opened, cid)
            assert not lineage & hashes, f"version {v.model_version}: {cid} saw a forgotten record"
            assert lineage & kept or not v.shards, cid
    assert lineage_check.lineage_violations(opened, versions.shard_checkpoints(store.serving_version()), hashes) == []

    # the proof and the certificate
    report = store.verify(request.request_id, replay=True)
    assert report["passed"] and report["replay"] and all(r["identical"] for r in report["replay"].values())
    cert = store.certificate(request.request_id)
    assert cert["request_id"] == request.request_id and cert["lineage_check"]["passed"]
    assert store.request(request.request_id).certificate == cert

    # the model that serves answers, and scores what it was given
    model = store.model()
    assert model.model_version == store.serving_version().model_version
    assert isinstance(model.generate(first[0]["prompt"], max_new_tokens=4), str)
    losses = model.score([first[0]["text"], first[1]["text"]])
    assert len(losses) == 2 and all(loss > 0 for loss in losses)

    # rollback: refused to a version that saw the person, allowed to the one before them
    with pytest.raises(RefusedError):
        store.rollback(2)
    assert store.rollback(1).current == 1
    assert store.serving_version().model_version == 1
