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

from sisa.config import TrackingConfig
from sisa.tracking import Tracker, tracking_uri
from storage.errors import ConfigError, NotFoundError

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
        1, "train", params={"num_shards": 4, "lr": 0.001, "fingerprint": "f00d"},
        metrics={"loss": 0.5}, tags={"sisa.kind": "exact"},
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
    assert client.get_model_version_by_alias(CFG.registered_model, CFG.alias).version == int(
        out["registered_version"]
    )
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
        11, "forget", {"fingerprint": marker}, {"loss": 2.0}, {"sisa.note": marker},
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
