"""Records of any length, never cut in silence (issue 32 §1): `sisa train` says how long the records
it trains are and how many it cuts (CLI, --json, MLflow); `training.truncation=refuse` names the
records over max_length and changes nothing; the cut rule is part of the training fingerprint; a
store trained by the engine before it (another cut rule among other things) is not continued; and
`sisa verify --replay` still proves a store with cut records exact."""

from __future__ import annotations

import json

import pytest
from sisa.pipelines import train
from sisa.storage.errors import RefusedError, ValidationError
from sisa.storage.store import Store

from sisa import config as config_module
from sisa.data.synthetic import make_people
from sisa.lineage import checkpoints
from tests.helpers import cli_args, ingest_rows, make_cfg, run_cli, tree_digest
from tests.pipelines.helpers import all_checkpoints

ROWS = make_people(6, seed=1)  # 12 text records of 36..73 tiny (byte) tokens
CUT = "training.max_length=48"
LENGTHS = sorted(len(r["text"].encode()) + 2 for r in ROWS)  # bos + bytes + eos
LONG = sorted(r["record_id"] for r in ROWS if len(r["text"].encode()) + 2 > 48)


def _fingerprints(store: Store) -> set[str]:
    return {
        checkpoints.read_manifest(store, shard, cid)["training_fingerprint"]
        for (shard, _), cids in all_checkpoints(store).items()
        for cid in cids
    }


def test_train_says_how_many_records_it_cuts_and_mlflow_keeps_it(tmp_path, capfd):
    from sisa.serving.tracking import Tracker

    assert 0 < len(LONG) < len(ROWS)
    cfg = make_cfg(tmp_path / "s", CUT, tracking=True)
    ingest_rows(cfg, ROWS, tmp_path / "in" / "a.jsonl")
    capfd.readouterr()
    code, out, err = run_cli("train", *cli_args(tmp_path / "s", CUT, tracking=True), capfd=capfd)
    assert code == 0, err
    assert (
        f"record lengths in tokens: p50 {LENGTHS[5]}, p95 {LENGTHS[11]}, max {LENGTHS[11]} (12 records); "
        f"{len(LONG)} over max_length 48: training cuts them, keeping their start (training.truncation: cut)"
    ) in out
    assert all(r["text"] not in out + err for r in ROWS)

    tracker = Tracker(cfg.tracking, str(tmp_path / "s"))
    exp = tracker.client.get_experiment_by_name(cfg.tracking.experiment)
    (run,) = tracker.client.search_runs([exp.experiment_id], "tags.model_version = '1'")
    assert run.data.metrics["length_over"] == len(LONG)
    assert run.data.metrics["length_max"] == LENGTHS[-1] and run.data.metrics["length_records"] == 12
    assert (run.data.params["max_length"], run.data.params["truncation"]) == ("48", "cut")

    # The checkpoints carry the fingerprint that holds the cut rule.
    store = Store.open(cfg.store.uri)
    assert _fingerprints(store) == {cfg.training_fingerprint()}

    code, out, err = run_cli("train", "--from-scratch", "--json", *cli_args(tmp_path / "s", CUT), capfd=capfd)
    assert code == 0, err
    lengths = json.loads(out)["lengths"]
    assert (lengths["records"], lengths["over"], lengths["max"], lengths["max_length"]) == (12, len(LONG), 73, 48)


def test_refuse_names_the_records_over_max_length_and_changes_nothing(tmp_path, capfd):
    cfg = make_cfg(tmp_path / "s", CUT, "training.truncation=refuse")
    ingest_rows(cfg, ROWS, tmp_path / "in" / "a.jsonl")
    before = tree_digest(tmp_path / "s")
    with pytest.raises(ValidationError) as err:
        train.run(cfg)
    message = str(err.value)
    assert f"{len(LONG)} record(s) are longer than max_length 48" in message and "nothing was trained" in message
    assert all(rid in message for rid in LONG)
    assert not any(r["record_id"] in message for r in ROWS if r["record_id"] not in LONG)
    assert all(r["text"] not in message for r in ROWS)
    capfd.readouterr()
    code, _, stderr = run_cli("train", *cli_args(tmp_path / "s", CUT, "training.truncation=refuse"), capfd=capfd)
    assert code == ValidationError.exit_code and LONG[0] in stderr
    assert tree_digest(tmp_path / "s") == before
    # Room for every record: it trains.
    roomy = make_cfg(tmp_path / "s", "training.truncation=refuse", "training.max_length=80")
    assert train.run(roomy).model_version == 1
    assert _fingerprints(Store.open(roomy.store.uri)) == {roomy.training_fingerprint()}


def test_a_store_trained_by_the_engine_before_is_not_continued(tmp_path, monkeypatch):
    """Checkpoints as the engine before issue 32 wrote them (another cut rule, another loss
    normalisation): continuing them would mix two trainers in one chain, so `sisa train` refuses,
    naming the engine versions, and `--from-scratch` retrains every shard."""
    cfg = make_cfg(tmp_path / "s", CUT, "sharding.slice_size=4")
    ingest_rows(cfg, ROWS, tmp_path / "in" / "a.jsonl")
    monkeypatch.setattr(config_module, "TRAINER_VERSION", 1)
    train.run(cfg)
    monkeypatch.undo()
    ingest_rows(cfg, make_people(2, seed=2, start=50), tmp_path / "in" / "b.jsonl")
    with pytest.raises(
        RefusedError, match=rf"trainer: 1 \(the store's\) vs {config_module.TRAINER_VERSION} \(given\)"
    ) as err:
        train.run(cfg)
    assert "--from-scratch" in str(err.value)
    assert Store.open(cfg.store.uri).current_version() == 1
    assert train.run(cfg, from_scratch=True).model_version == 2


def test_verify_replay_is_exact_on_a_store_with_cut_records(tmp_path, capfd):
    cfg = make_cfg(tmp_path / "s", CUT, "sharding.slice_size=4")
    ingest_rows(cfg, ROWS, tmp_path / "in" / "a.jsonl")
    train.run(cfg)
    assert cfg.training_fingerprint() in _fingerprints(Store.open(cfg.store.uri))
    capfd.readouterr()
    code, out, err = run_cli("verify", "--replay", "--json", *cli_args(tmp_path / "s", CUT, "sharding.slice_size=4"))
    assert code == 0, err
    report = json.loads(out)
    assert report["replay"] and all(r["identical"] for r in report["replay"].values())
