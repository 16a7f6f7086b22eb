"""Tracking on an MLflow tracking server (README, "Scaling out"): `mlflow server` on 127.0.0.1 with
its own sqlite backend and artifact root, `tracking.uri=http://127.0.0.1:PORT`.

Runs, registered versions, the `serving` alias and the loadable model work through the server. A
forget's purge deletes what the server lets a client delete (the registered version, the
artifacts, through the server's proxy), soft-deletes the runs and models, then fails closed
printing the `mlflow gc` command for the rest; after that command `sisa forget --resume`
completes and nothing of the purged version is left in the server's stores.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from sisa.storage import ledgers
from sisa.storage.errors import RefusedError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people, write_jsonl
from sisa.lineage import versions
from sisa.serving import engine as serving
from tests.helpers import TINY, find_canaries, run_cli
from tests.servers import BIN

pytestmark = pytest.mark.slow
PROMPTS = ["Ada Lane works as a"]


@pytest.fixture
def server(mlflow_tracking):
    return mlflow_tracking


def _rows(db, sql: str) -> list[tuple]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_runs_versions_alias_and_model_through_a_server_and_a_purge_that_fails_closed(
    server, tmp_path, capfd, monkeypatch
):
    rows = make_people(8, seed=71)
    write_jsonl(rows, tmp_path / "people.jsonl")
    args = [
        "--config",
        TINY,
        f"store.uri={tmp_path / 's'}",
        "scheduler.backend=serial",
        "tracking.enabled=true",
        f"tracking.uri={server.uri}",
        "deletion.relief=false",
        "sharding.slice_size=4",
    ]

    def sisa(*argv: str, expect: int = 0) -> str:
        code, out, err = run_cli(*argv, capfd=capfd)
        assert code == expect, f"sisa {argv[0]} exited {code}: {err[-2000:]}"
        return out + err

    sisa("ingest", str(tmp_path / "people.jsonl"), *args)
    sisa("train", *args)
    client = MlflowClient(server.uri, server.uri)
    (v1,) = client.search_model_versions("name = 'sisa-model'")
    assert client.get_registered_model("sisa-model").aliases == {"serving": v1.version}
    run = client.get_run(v1.run_id)
    assert run.data.tags["model_version"] == "1" and run.info.lifecycle_stage == "active"
    assert not (tmp_path / "s" / "mlflow.db").exists()  # nothing tracked inside the store
    # The model loads from the server's registry and generates what sisa serves.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    model = mlflow.pyfunc.load_model("models:/sisa-model@serving")
    cfg_store = Store.open(str(tmp_path / "s"))
    from sisa.config import load_config

    cfg = load_config(TINY, args[2:])
    _, ens = serving.load_serving(cfg_store, cfg)
    assert model.predict(PROMPTS, params={"max_new_tokens": 5}) == [serving.generate_text(ens, PROMPTS[0], 5)]
    # sisa itself never relies on the process-wide URI (the forget below runs without it).
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    v1_ckpts = {f"checkpoint {c}": c for c in versions.read(cfg_store, 1).shards.values()}
    assert all(find_canaries({"server artifacts": server.artifacts}, v1_ckpts).values())  # positive control

    # The purge does what a client may, then refuses and names the command for the rest.
    out = sisa("forget", "--subject", rows[0]["subject_id"], *args, expect=RefusedError.exit_code)
    match = re.search(
        r"mlflow gc --backend-store-uri <the server's backend store> (--run-ids \S+(?: "
        r"--logged-model-ids \S+)?)",
        out,
    )
    assert match, out
    assert "Downloading artifacts" not in out  # no progress bars of MLflow's own in a log
    assert not client.search_model_versions("name = 'sisa-model' and tags.model_version = '1'")
    assert client.get_run(v1.run_id).info.lifecycle_stage == "deleted"  # soft: a row on the server
    assert _rows(server.backend, f"SELECT count(*) FROM runs WHERE run_uuid = '{v1.run_id}'") == [(1,)]
    (req,) = ledgers.list_requests(cfg_store.fs)
    assert req["status"] != "completed"  # fails closed: the request stays open
    # ...after deleting the artifacts through the server: v1's model (naming the tainted
    # checkpoints) is gone from the artifact root already.
    exact = versions.read(cfg_store, cfg_store.current_version()).shards.values()
    tainted = {k: c for k, c in v1_ckpts.items() if c not in exact}
    assert tainted and not any(find_canaries({"server artifacts": server.artifacts}, tainted).values())

    # The operator runs the printed command on the server, then resumes.
    gc = [str(BIN / "mlflow"), "gc", "--backend-store-uri", server.backend_uri, *match.group(1).split()]
    done = subprocess.run(
        gc,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "MLFLOW_TRACKING_URI": server.uri},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sisa("forget", "--resume", *args)
    (req,) = ledgers.list_requests(Store.open(str(tmp_path / "s")).fs)
    assert req["status"] == "completed"
    assert _rows(server.backend, f"SELECT count(*) FROM runs WHERE run_uuid = '{v1.run_id}'") == [(0,)]
    purged = {f"checkpoint {c}": c for c in req["purge"]["checkpoints"]}
    assert purged
    places = {"server db": [server.backend], "server artifacts": server.artifacts}
    assert not any(find_canaries(places, purged).values())
    # The exact version serves, registered and aliased on the server.
    current = Store.open(str(tmp_path / "s")).current_version()
    (mv,) = client.search_model_versions(f"name = 'sisa-model' and tags.model_version = '{current}'")
    assert client.get_registered_model("sisa-model").aliases == {"serving": mv.version}
