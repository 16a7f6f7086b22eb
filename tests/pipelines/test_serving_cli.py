"""Using a trained model through the CLI: generate, eval, export, versions, requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import torch
from safetensors.torch import load_file
from sisa.pipelines.cli import main
from sisa.storage import ledgers
from sisa.storage.store import Store

from sisa.config import build_config
from sisa.data.synthetic import make_people, write_jsonl
from sisa.lineage import versions
from sisa.model import adapters
from sisa.model.base import load_base_model
from sisa.serving import engine as serving
from sisa.serving.engine import load_ensemble
from tests.helpers import cli_args

ROWS = make_people(10, seed=5)


def test_generate_is_deterministic_and_eval_reports_every_shard(tmp_path, make_trained_store, capsys):
    make_trained_store(ROWS)
    args = cli_args(tmp_path / "s")
    assert main(["generate", *args, "--prompt", "Ada works as a", "--max-new-tokens", "8", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["generate", *args, "--prompt", "Ada works as a", "--max-new-tokens", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert first["model_version"] == 1 and first["shards"] == [0, 1]
    assert (first["aggregation"], first["prior"], first["top_shards"]) == ("posterior", "uniform", 2)
    # The serving settings come from the config: the uniform mean, or the best shard alone.
    for extra in (["serving.aggregation=uniform"], ["serving.top_shards=1", "serving.prior=records"]):
        assert main(["generate", *args, *extra, "--prompt", "Ada works as a", "--max-new-tokens", "8", "--json"]) == 0
        other = json.loads(capsys.readouterr().out)
        assert other["aggregation"] == ("uniform" if "serving.aggregation=uniform" in extra else "posterior")
        assert isinstance(other["completion"], str)

    heldout = write_jsonl(make_people(3, seed=5, start=50), tmp_path / "heldout.jsonl")
    assert main(["eval", *args, "--file", str(heldout), "--answer-only", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["answer_only"] and res["records"] == 6
    assert [r["model"] for r in res["results"]] == ["posterior", "uniform", "shard 0", "shard 1"]
    assert [r["serving"] for r in res["results"]] == [True, False, False, False]
    assert res["aggregation"] == "posterior"
    assert all(r["loss"] > 0 for r in res["results"])
    assert main(["eval", *args, "serving.aggregation=uniform", "--file", str(heldout), "--answer-only"]) == 0
    out = capsys.readouterr().out
    assert "uniform (serving)" in out and "posterior (serving)" not in out
    assert main(["eval", *args, "--file", str(tmp_path / "nope.jsonl")]) == 4
    # The failed eval left the store usable: the same generation again.
    assert main(["generate", *args, "--prompt", "Ada works as a", "--max-new-tokens", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first


def test_measure_records_reports_both_aggregations_and_a_records_prior(tmp_path, make_trained_store):
    cfg = make_trained_store(ROWS).cfg
    store = Store.open(cfg.store.uri)
    shards = versions.shard_checkpoints(versions.current(store))
    rows = make_people(3, seed=5)
    texts, prompts = [r["text"] for r in rows], [r["prompt"] for r in rows]
    m = serving.measure_records(store, cfg, shards, texts, prompts)
    assert m["aggregation"] == "posterior" and m["ensemble"] == m["by_aggregation"]["posterior"]
    assert set(m["by_aggregation"]) == {"posterior", "uniform"} and set(m["per_shard"]) == {"0", "1"}
    # The same numbers as scoring through the ensemble directly, under each aggregation.
    ens = load_ensemble(store, cfg, shards)
    for aggregation in ("posterior", "uniform"):
        losses, _ = serving.score_records(ens, texts, prompts, cfg.training.max_length, aggregation=aggregation)
        assert serving.mean(losses) == pytest.approx(m["by_aggregation"][aggregation])
    # prior: records weighs each shard by its live records in the index.
    live = serving.live_record_counts(store)
    assert sum(live.values()) == len(make_people(10, seed=5)) and set(live) == {0, 1}
    weighted = load_ensemble(store, build_config(cfg.to_dict(), ["serving.prior=records"]), shards)
    total = sum(live.values())
    assert torch.allclose(weighted.log_prior().exp(), torch.tensor([live[0] / total, live[1] / total]))
    assert torch.allclose(ens.log_prior().exp(), torch.tensor([0.5, 0.5]))


def test_export_is_a_peft_folder_equal_to_the_weighted_merge(tmp_path, make_trained_store, capsys):
    from peft import PeftModel

    cfg = make_trained_store(ROWS).cfg
    out = tmp_path / "merged"
    assert main(["export", *cli_args(tmp_path / "s"), "--out", str(out)]) == 0
    exported = load_file(str(out / "adapter_model.safetensors"))
    # Loads as a normal PEFT folder.
    base, _ = load_base_model(cfg.model)
    PeftModel.from_pretrained(base, str(out))
    # Equals the merge computed again from the serving checkpoints.
    store = Store.open(cfg.store.uri)
    ens = load_ensemble(store, cfg, versions.shard_checkpoints(versions.current(store)))
    again = adapters.merge_adapters(ens.model, ens.adapter_names(), [0.5, 0.5], "again", tmp_path / "again")
    expected = load_file(str(again / "adapter_model.safetensors"))
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in exported)
    # A non-empty folder is never overwritten.
    assert main(["export", *cli_args(tmp_path / "s"), "--out", str(out)]) == 4


def test_versions_and_overdue_requests_are_listed(tmp_path, make_trained_store, capsys):
    cfg = make_trained_store(ROWS).cfg
    args = cli_args(tmp_path / "s")
    assert main(["versions", *args, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["current"] == 1 and [v["status"] for v in listed["versions"]] == ["active"]

    # A request past its deadline and not completed is flagged overdue.
    store = Store.open(cfg.store.uri)
    old = datetime.now(UTC) - timedelta(days=40)
    ledgers.write_request(
        store.fs,
        {
            "request_id": "req-old",
            "selector": {"kind": "ids", "value_hash": "x", "value_hashes": []},
            "id_hashes": [],
            "records": 0,
            "mode": "exact",
            "status": "failed",
            "received_at": old.isoformat(),
            "deadline": (old + timedelta(days=30)).isoformat(),
            "history": [],
            "versions": {},
        },
    )
    assert main(["requests", *args, "--json"]) == 0
    reqs = json.loads(capsys.readouterr().out)
    assert [(r["request_id"], r["overdue"]) for r in reqs] == [("req-old", True)]
    assert main(["requests", *args]) == 0
    assert "OVERDUE" in capsys.readouterr().out


def test_forget_scores_a_holdout_file_without_storing_it(tmp_path, make_trained_store, capsys):
    make_trained_store(ROWS)
    canary = "HOLDOUT-CANARY-7f3a"
    holdout = write_jsonl(
        [{"record_id": "h1", "text": f"{canary} works as a pilot.", "prompt": f"{canary} works as a"}],
        tmp_path / "h.jsonl",
    )
    args = cli_args(tmp_path / "s")
    assert main(["forget", *args, "--subject", "person-00001", "--holdout", str(holdout), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)["request"]["evidence"]
    assert ev["holdout_records"] == 1 and ev["holdout_before"] > 0 and ev["holdout_after"] > 0
    for path in (tmp_path / "s").rglob("*"):
        if path.is_file():
            assert canary.encode() not in path.read_bytes(), path
    assert main(["certificate", *args, _last_request(tmp_path)]) == 0
    assert "held-out records no model saw (1)" in capsys.readouterr().out


def _last_request(tmp_path) -> str:
    store = Store.open(str(tmp_path / "s"))
    return ledgers.list_requests(store.fs)[-1]["request_id"]
