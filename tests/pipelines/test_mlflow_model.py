"""Every registered model version is a loadable MLflow model (README, "Serving and export").

A tiny store trained with tracking on (real MLflow, sqlite in the store):
`mlflow.pyfunc.load_model("models:/sisa-model@serving").predict(prompts)` generates what
`sisa generate` generates, a forget moves the alias to a model that loads and purges the tainted
version's model, and `mlflow models serve` answers an invocation on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sisa.pipelines import forget
from sisa.storage.errors import NotFoundError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people
from sisa.lineage import requests_ledger, versions
from sisa.serving import bundle
from sisa.serving import engine as serving
from tests.helpers import REPO, cli_args, run_cli, train_store

pytestmark = pytest.mark.slow
MODEL_URI = "models:/sisa-model@serving"
PROMPTS = ["Ada Lane works as a", "Bo Reed lives in"]
ROWS = make_people(10, seed=5)
TRAINING = ("training.epochs=2",)


def _uri(cfg) -> str:
    return f"sqlite:///{Path(cfg.store.uri).resolve() / 'mlflow.db'}"


def _served(cfg, max_new_tokens: int, prompts: list[str] = PROMPTS) -> list[str]:
    """What the store's serving version generates, greedily."""
    _, ens = serving.load_serving(Store.open(cfg.store.uri), cfg)
    return [serving.generate_text(ens, p, max_new_tokens) for p in prompts]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    return train_store(tmp_path_factory.mktemp("mlmodel"), ROWS, *TRAINING, tracking=True).cfg


@pytest.fixture
def registry(tracked, monkeypatch):
    """MLflow's default URIs pointed at the store's database, as a user's environment would."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _uri(tracked))
    return MlflowClient(_uri(tracked), _uri(tracked))


def test_the_serving_alias_loads_and_generates_as_sisa_serves(tracked, registry):
    model = mlflow.pyfunc.load_model(MODEL_URI)
    expected = _served(tracked, 6)
    assert model.predict(PROMPTS, params={"max_new_tokens": 6}) == expected
    assert model.predict(pd.DataFrame({"id": [7, 8], "prompt": PROMPTS}), params={"max_new_tokens": 6}) == expected
    assert model.predict(PROMPTS[0], params={"max_new_tokens": 6}) == expected[:1]
    assert model.predict(PROMPTS[:1]) == _served(tracked, 32, PROMPTS[:1])  # greedy, 32 tokens by default
    params = {p.name: p.default for p in model.metadata.signature.params.params}
    assert params == {"max_new_tokens": 32, "greedy": True, "temperature": 1.0, "seed": 0}
    sampled = model.predict(PROMPTS[:1], params={"greedy": False, "seed": 3, "max_new_tokens": 6})
    assert sampled == model.predict(PROMPTS[:1], params={"greedy": False, "seed": 3, "max_new_tokens": 6})
    with pytest.raises(Exception, match="`prompt` column"):
        model.predict(pd.DataFrame({"text": PROMPTS}))

    # The registered version is the logged model of that version's run, its artifacts the
    # version's adapters (sha256 as in the store) and manifest.
    store = Store.open(tracked.store.uri)
    v = versions.current(store)
    mv = registry.get_model_version_by_alias("sisa-model", "serving")
    assert mv.tags["model_version"] == str(v.model_version) and mv.run_id == v.mlflow["run_id"]
    logged = registry.get_logged_model(v.mlflow["model_id"])
    assert mv.source == logged.artifact_location and logged.source_run_id == mv.run_id
    folder = Path(logged.artifact_location.removeprefix("file://")) / "artifacts"
    assert folder.is_relative_to(Path(tracked.store.uri).resolve() / "mlartifacts")
    manifest = bundle.read_manifest(folder / bundle.MANIFEST)
    assert manifest["model_version"] == v.model_version
    assert {int(k): s["checkpoint_id"] for k, s in manifest["shards"].items()} == v.shards
    bundle.verify_adapters(manifest, {k: folder / bundle.shard_name(k) for k in v.shards})


def test_mlflow_models_serve_answers_on_loopback(tracked, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": _uri(tracked),
        # MLflow starts uvicorn by name, from this interpreter's environment; the model imports sisa.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "serve.log").open("wb")
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        MODEL_URI,
        "--env-manager",
        "local",
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (
                f"mlflow models serve exited with {proc.returncode}: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
            assert time.monotonic() < deadline, (
                f"no answer on {base}/ping within 240 s: {(tmp_path / 'serve.log').read_text()[-3000:]}"
            )
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)

        def invoke(payload: dict) -> list[str]:
            req = urllib.request.Request(
                f"{base}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read())["predictions"]

        expected = _served(tracked, 6)
        assert invoke({"inputs": PROMPTS, "params": {"max_new_tokens": 6}}) == expected
        assert (
            invoke({"dataframe_records": [{"prompt": p} for p in PROMPTS], "params": {"max_new_tokens": 6}}) == expected
        )
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def test_a_forget_moves_the_alias_to_a_loadable_model_and_purges_the_old_one(tmp_path, make_trained_store, monkeypatch):
    cfg = make_trained_store(ROWS, *TRAINING, tracking=True).cfg
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _uri(cfg))
    client = MlflowClient(_uri(cfg), _uri(cfg))
    store = Store.open(cfg.store.uri)
    old = versions.current(store)
    old_model = client.get_logged_model(old.mlflow["model_id"])
    old_folder = Path(old_model.artifact_location.removeprefix("file://")).parent
    assert old_folder.is_dir()

    forget.run(cfg, "subject", [ROWS[0]["subject_id"]], quiet=True)
    new = versions.current(store)
    assert new.model_version != old.model_version
    model = mlflow.pyfunc.load_model(MODEL_URI)
    assert model.metadata.metadata["sisa_model_version"] == new.model_version
    assert model.predict(PROMPTS, params={"max_new_tokens": 6}) == _served(cfg, 6)
    # The tainted version's model is physically gone: its folder, its row, its registered version.
    assert not old_folder.exists()
    with pytest.raises(Exception, match="not found"):
        client.get_logged_model(old.mlflow["model_id"])
    assert old.mlflow["registered_version"] not in {
        v.version for v in client.search_model_versions("name = 'sisa-model'")
    }
    models = sorted(p.name for p in (Path(cfg.store.uri) / "mlartifacts" / "models").iterdir())
    assert models == [new.mlflow["model_id"]]


def test_the_base_model_is_named_unless_asked_to_be_copied(tmp_path, make_trained_store, monkeypatch):
    """A base loaded from a local folder: by default the model names the folder (and a bundle
    finds a moved one by override); with tracking.log_base_model the MLflow model carries it."""
    from sisa.config import ModelConfig
    from sisa.model.base import load_base_model

    folder = tmp_path / "base"
    base, tok = load_base_model(ModelConfig(name="tiny", device="cpu"))
    base.save_pretrained(folder)
    tok.save_pretrained(folder)
    extra = (f"model.name={folder}", f"model.cache_dir={tmp_path / 'cache'}", "tracking.log_base_model=true")
    cfg = make_trained_store(ROWS, *TRAINING, *extra, tracking=True).cfg
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _uri(cfg))
    expected = _served(cfg, 6)
    code, _, err = run_cli(
        "export",
        "--format",
        "ensemble",
        "--out",
        str(tmp_path / "b"),
        *cli_args(tmp_path / "s", f"model.name={folder}", f"model.cache_dir={tmp_path / 'cache'}"),
    )
    assert code == 0, err
    moved = tmp_path / "moved-base"
    shutil.move(folder, moved)

    # The MLflow model brought its own copy of the base.
    model = mlflow.pyfunc.load_model(MODEL_URI)
    assert model.predict(PROMPTS, params={"max_new_tokens": 6}) == expected
    # The bundle names the folder: gone, it says so; pointed at its new place, it serves as before.
    with pytest.raises(NotFoundError, match="model.name"):
        bundle.load_bundle(tmp_path / "b")
    _, ens = bundle.load_bundle(tmp_path / "b", {"base_model": str(moved)})
    assert bundle.generate_texts(ens, PROMPTS, 6) == expected


def test_a_relief_of_every_shard_is_logged_as_the_base_model_alone(tmp_path, make_trained_store, monkeypatch):
    """Queued requests that hit slice 0 of every shard: the relief serves no adapter. That
    version is logged, registered and loadable like any other (it once failed after its commit,
    leaving the request half done), and the batch after it completes the requests."""
    cfg = make_trained_store(ROWS, *TRAINING, "deletion.relief=true", "sharding.slice_size=4", tracking=True).cfg
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _uri(cfg))
    store = Store.open(cfg.store.uri)
    first = {}
    for r in store.index.table.to_pylist():
        if r["slice_idx"] == 0:
            first.setdefault(r["shard_id"], r["subject_id"])
    assert sorted(first) == list(range(store.num_shards))
    for subject in first.values():
        forget.run(cfg, "subject", [subject], queue=True, evidence=False, quiet=True)
    relief = versions.current(store)
    assert relief.shards == {} and relief.mlflow.get("registered_version")
    assert relief.excluded_shards == list(range(store.num_shards))
    model = mlflow.pyfunc.load_model(MODEL_URI)
    assert model.metadata.metadata["sisa_model_version"] == relief.model_version
    assert model.predict(PROMPTS, params={"max_new_tokens": 6}) == _served(cfg, 6)
    code, _, err = run_cli(
        "export",
        "--format",
        "ensemble",
        "--out",
        str(tmp_path / "b"),
        *cli_args(tmp_path / "s", "deletion.relief=true", "sharding.slice_size=4", tracking=True),
    )
    assert code == 0, err
    manifest, ens = bundle.load_bundle(tmp_path / "b")
    assert manifest["shards"] == {} and bundle.generate_texts(ens, PROMPTS, 6) == _served(cfg, 6)

    code, _, err = run_cli(
        "process", *cli_args(tmp_path / "s", "deletion.relief=true", "sharding.slice_size=4", tracking=True)
    )
    assert code == 0, err
    assert all(r.status.name == "COMPLETED" for r in requests_ledger.all_requests(store))
