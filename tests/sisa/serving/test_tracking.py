"""Tracking against a real MLflow sqlite backend inside a store directory.

One store (and one MLflow database: creating its tables takes ~1.5 s) serves the module; each
test uses its own model_version numbers so the tests stay independent.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sisa.storage.errors import ConfigError, NotFoundError

from sisa.config import TrackingConfig
from sisa.serving.tracking import Tracker, tracking_uri

pytestmark = pytest.mark.slow

CFG = TrackingConfig(experiment="sisa-test", registered_model="sisa-test-model")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def tracker(store) -> Tracker:
    return Tracker(CFG, str(store))


@pytest.fixture(scope="module")
def client(tracker) -> MlflowClient:
    return MlflowClient(tracking_uri=tracker.uri, registry_uri=tracker.uri)


def _db_rows(store: Path, sql: str, *args) -> list[tuple]:
    con = sqlite3.connect(store / "mlflow.db")
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _manifest(tmp_path: Path, model_version: int) -> str:
    path = tmp_path / "version.json"
    path.write_text(json.dumps({"model_version": model_version, "shards": {"0": "ck-abc"}}))
    return str(path)


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    assert tracking_uri(TrackingConfig(uri="sqlite:////x/m.db"), str(tmp_path)) == "sqlite:////x/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(TrackingConfig(), str(tmp_path)) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    uri = tracking_uri(TrackingConfig(), "relative-store")
    assert uri == f"sqlite:///{Path('relative-store').resolve()}/mlflow.db"
    assert uri.startswith("sqlite:////")  # absolute: four slashes
    with pytest.raises(ConfigError, match="tracking.uri"):
        tracking_uri(TrackingConfig(), None)


def test_log_register_and_alias(tracker, client, store, tmp_path):
    out = tracker.log_model_version(
        1,
        "train",
        params={"num_shards": 4, "lr": 0.001, "fingerprint": "f00d"},
        metrics={"loss": 0.5},
        tags={"sisa.kind": "exact"},
        artifact_files=[_manifest(tmp_path, 1)],
    )
    run = client.get_run(out["run_id"])
    assert run.info.run_name == "v1"
    assert run.data.params == {"num_shards": "4", "lr": "0.001", "fingerprint": "f00d"}
    assert run.data.metrics == {"loss": 0.5}
    assert run.data.tags["model_version"] == "1" and run.data.tags["reason"] == "train"
    assert run.data.tags["sisa.kind"] == "exact"
    assert client.get_experiment(run.info.experiment_id).name == CFG.experiment
    # Artifacts stay inside the store.
    assert (store / "mlartifacts" / out["run_id"] / "artifacts" / "version.json").is_file()

    mv = client.get_model_version(CFG.registered_model, out["registered_version"])
    assert mv.run_id == out["run_id"] and mv.tags["model_version"] == "1"
    assert tracker.find_registered_version(1) == out["registered_version"]
    assert tracker.find_registered_version(999) is None

    # Repeating the call (a resumed pipeline) does not log a second run.
    assert tracker.log_model_version(1, "train", {}, {}, {}) == out

    out2 = tracker.log_model_version(2, "forget", {"num_shards": 4}, {"loss": 0.6}, {})
    tracker.set_serving_alias(1)
    assert client.get_model_version_by_alias(CFG.registered_model, CFG.alias).version == int(out["registered_version"])
    assert tracker.serving_version() == 1
    tracker.set_serving_alias(2)
    alias = client.get_model_version_by_alias(CFG.registered_model, CFG.alias)
    assert str(alias.version) == out2["registered_version"]
    assert tracker.serving_version() == 2

    with pytest.raises(NotFoundError, match="model_version 77"):
        tracker.set_serving_alias(77)


def test_purge_removes_run_physically(tracker, client, store, tmp_path):
    marker = "purge-me-7f3a9c"
    keep = tracker.log_model_version(10, "train", {"fingerprint": "keep-10"}, {"loss": 1.0}, {})
    gone = tracker.log_model_version(
        11,
        "forget",
        {"fingerprint": marker},
        {"loss": 2.0},
        {"sisa.note": marker},
        artifact_files=[_manifest(tmp_path, 11)],
    )
    run_id = gone["run_id"]
    assert _db_rows(store, "select count(*) from params where run_uuid = ?", run_id) == [(1,)]

    tracker.purge_model_version(11)

    assert tracker.find_registered_version(11) is None
    versions = client.search_model_versions(f"name = '{CFG.registered_model}'")
    assert gone["registered_version"] not in {str(v.version) for v in versions}
    assert _db_rows(store, "select * from runs where run_uuid = ?", run_id) == []
    for table in ("params", "metrics", "latest_metrics", "tags"):
        assert _db_rows(store, f"select * from {table} where run_uuid = ?", run_id) == []
    assert marker.encode() not in (store / "mlflow.db").read_bytes()  # vacuumed, not just unlinked
    assert not (store / "mlartifacts" / run_id).exists()

    # The other version is untouched; purging again is a no-op.
    assert client.get_run(keep["run_id"]).data.params == {"fingerprint": "keep-10"}
    assert tracker.find_registered_version(10) == keep["registered_version"]
    tracker.purge_model_version(11)
    tracker.purge_model_version(12345)


def test_purge_finishes_a_half_done_purge(tracker, client, store):
    out = tracker.log_model_version(20, "train", {"fingerprint": "x"}, {}, {})
    client.delete_run(out["run_id"])  # crash after the soft delete, before gc
    tracker.purge_model_version(20)
    assert _db_rows(store, "select * from runs where run_uuid = ?", out["run_id"]) == []
    assert tracker.find_registered_version(20) is None


def test_long_strings_are_refused_before_anything_is_logged(tracker, client):
    text = "x" * 501
    with pytest.raises(AssertionError, match="`note` is 501 characters") as info:
        tracker.log_model_version(30, "train", {"note": text}, {}, {})
    assert text not in str(info.value)
    with pytest.raises(AssertionError, match="tag `why`"):
        tracker.log_model_version(30, "train", {}, {}, {"why": text})
    with pytest.raises(AssertionError, match="tag `reason`"):
        tracker.log_model_version(30, text, {}, {}, {})
    assert tracker.find_registered_version(30) is None
    exp = client.get_experiment_by_name(CFG.experiment)
    assert client.search_runs([exp.experiment_id], "tags.model_version = '30'") == []


# -- the logged model of a version ------------------------------------------------------------------
def _model_parts(tmp_path: Path, marker: str) -> dict[str, str]:
    """Stand-ins for a bundle's parts (sisa/serving/bundle.py); logging does not load them."""
    (tmp_path / "shard0").mkdir(parents=True)
    (tmp_path / "shard0" / "adapter_model.safetensors").write_bytes(b"weights " + marker.encode())
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "sisa-ensemble", "marker": marker}))
    return {"manifest": str(tmp_path / "manifest.json"), "shard0": str(tmp_path / "shard0")}


def test_a_version_logs_a_model_from_code_registered_as_that_version(tracker, client, store, tmp_path):
    out = tracker.log_model_version(
        40, "train", {"num_shards": 1}, {}, {}, model_artifacts=_model_parts(tmp_path, "m40")
    )
    model = client.get_logged_model(out["model_id"])
    assert model.source_run_id == out["run_id"] and model.tags["model_version"] == "40"
    assert model.status.to_int() == model.status.READY.to_int()
    assert [o.model_id for o in client.get_run(out["run_id"]).outputs.model_outputs] == [out["model_id"]]
    mv = client.get_model_version(CFG.registered_model, out["registered_version"])
    assert mv.source == model.artifact_location and mv.run_id == out["run_id"] and mv.tags["model_version"] == "40"
    assert json.loads(client.get_logged_model(out["model_id"]).tags["mlflow.modelVersions"]) == [
        {"name": CFG.registered_model, "version": out["registered_version"]}
    ]
    # Its files: the models-from-code entry point (nothing to unpickle), the signature, the parts.
    folder = store / "mlartifacts" / "models" / out["model_id"] / "artifacts"
    files = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert {
        "MLmodel",
        "sisa_model.py",
        "requirements.txt",
        "artifacts/manifest.json",
        "artifacts/shard0/adapter_model.safetensors",
    } <= files
    assert not [f for f in files if f.endswith(".pkl")]
    mlmodel = (folder / "MLmodel").read_text()
    assert "max_new_tokens" in mlmodel and "model_code_path" in mlmodel
    assert "from sisa.serving.mlflow_model import EnsembleModel" in (folder / "sisa_model.py").read_text()
    # A repeated call returns the entry as it is.
    assert tracker.log_model_version(40, "train", {}, {}, {}) == {k: out[k] for k in ("run_id", "registered_version")}


def test_purge_removes_the_logged_model_with_its_run(tracker, client, store, tmp_path):
    out = tracker.log_model_version(
        41, "train", {"fingerprint": "f41"}, {}, {}, model_artifacts=_model_parts(tmp_path, "purge-model-41")
    )
    folder = store / "mlartifacts" / "models" / out["model_id"]
    assert folder.is_dir()
    tracker.purge_model_version(41)
    assert not folder.exists()
    for table, column in (
        ("logged_models", "model_id"),
        ("logged_model_params", "model_id"),
        ("logged_model_tags", "model_id"),
    ):
        assert _db_rows(store, f"select * from {table} where {column} = ?", out["model_id"]) == []
    assert b"purge-model-41" not in (store / "mlflow.db").read_bytes()
    assert not any(b"purge-model-41" in p.read_bytes() for p in (store / "mlartifacts").rglob("*") if p.is_file())


def test_purge_finishes_when_a_crash_left_a_logged_model_behind(tracker, client, store, tmp_path):
    """A crash between logging the model and registering it: the next call purges the
    half-logged run and its model, then logs both again."""
    out = tracker.log_model_version(42, "train", {}, {}, {}, model_artifacts=_model_parts(tmp_path / "a", "m42"))
    client.delete_model_version(CFG.registered_model, out["registered_version"])  # as if never registered
    again = tracker.log_model_version(42, "train", {}, {}, {}, model_artifacts=_model_parts(tmp_path / "b", "m42"))
    assert again["model_id"] != out["model_id"]
    assert _db_rows(store, "select * from logged_models where model_id = ?", out["model_id"]) == []
    assert not (store / "mlartifacts" / "models" / out["model_id"]).exists()
    assert (store / "mlartifacts" / "models" / again["model_id"]).is_dir()
