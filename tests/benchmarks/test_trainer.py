"""benchmarks/trainer.py's plumbing on the tiny model and a few TOFU-shaped records: both sides
train the same work, the evaluation reads both adapters, the report prints. Never its timings."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

if not os.environ.get("SISA_REQUIRE_TRL"):  # `make test` sets it: there trl must be installed
    pytest.importorskip("trl", reason="trl is the bench extra: make install")

sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark imports its `_common` as a sibling
from benchmarks import trainer  # noqa: E402

# 3 authors: at S=2 they hash to shards of 40 and 20 records (store seed 0), so both shards train.
SETTING = trainer.Setting(model="tiny", authors=3, epochs=2, batch_size=4, max_length=256, lr=5e-3)


def write_tofu(folder: Path, authors: int) -> None:
    """full.jsonl and retain_perturbed.jsonl as TOFU lays them out, with short made-up QA pairs."""
    full, perturbed = [], []
    for index in range(authors * trainer.AUTHOR_RECORDS):
        author = index // trainer.AUTHOR_RECORDS
        row = {"index": index, "author": author, "question": f"Q{index} of writer {author}?", "answer": f"A{index}."}
        full.append(row)
        perturbed.append({**row, "paraphrased_question": f"Writer {author}, item {index}?"})
    for name, rows in (("full", full), ("retain_perturbed", perturbed)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_one_setting_gives_both_trainers_the_same_knobs(tmp_path: Path) -> None:
    cfg, trl = trainer.configs_for(SETTING, str(tmp_path / "store"), 1, 20, str(tmp_path / "out"))
    sft, lora = trl["sft"], trl["lora"]
    t = cfg.training
    assert (t.lr, t.batch_size, t.max_length, t.epochs) == (
        sft["learning_rate"],
        sft["per_device_train_batch_size"],
        sft["max_length"],
        sft["num_train_epochs"],
    )
    assert (t.weight_decay, t.max_grad_norm, t.loss_on) == (sft["weight_decay"], sft["max_grad_norm"], "completion")
    assert sft["completion_only_loss"] and not sft["bf16"] and not sft["gradient_checkpointing"]
    assert t.prompt_loss_weight == 0  # TRL's completion-only loss, not sisa's default 0.1
    assert (cfg.lora.r, cfg.lora.alpha, list(cfg.lora.target_modules)) == (
        lora["r"],
        lora["lora_alpha"],
        lora["target_modules"],
    )
    assert cfg.scheduler.backend == "serial" and not cfg.tracking.enabled


def test_both_sides_train_the_same_tokens_and_are_evaluated_alike(tmp_path: Path, capsys) -> None:
    import torch

    write_tofu(tmp_path, authors=6)
    sets = trainer.tofu_sets(tmp_path, SETTING.authors, eval_records=10)
    work = str(tmp_path / "work")
    os.makedirs(work)
    threads = torch.get_num_threads()
    try:
        folder = trainer.base_folder(SETTING, work)
        sisa = trainer.train_sisa(SETTING, sets["train"], work, 1)
        trl = trainer.train_trl(SETTING, sets["train"], work, folder)
        sharded = trainer.train_sisa(SETTING, sets["train"], work, 2)
    finally:
        torch.set_num_threads(threads)
    # 60 records, batches of 4, 2 epochs; the same records tokenized the same way on both sides.
    assert sisa["steps"] == trl["steps"] == 30
    assert sisa["tokens"] == trl["tokens"] > 0
    # tiny.yaml trains no extra steps (min_steps_per_slice 0): two shards, the same records' tokens.
    assert sharded["tokens"] == sisa["tokens"] and len(sharded["adapters"]) == 2
    items = {name: trainer.examples(rows) for name, rows in sets.items()}
    base = trainer.evaluate(folder, None, items, SETTING.max_length)
    for side in (sisa, trl):
        assert math.isfinite(side["step_loss"]) and side["peak_rss_mb"] > 0
        side["eval"] = trainer.evaluate(folder, side["adapters"][0], items, SETTING.max_length)
        assert side["eval"]["train"] < base["train"], f"{side['side']}: its adapter did not lower the trained loss"
    lengths = trainer.token_lengths(folder, items["train"], SETTING.max_length)
    assert lengths["over"] == 0 and 0 < lengths["p50"] <= lengths["max"] <= SETTING.max_length
    trainer.report(
        {
            "setting": SETTING,
            "sides": [sisa, trl, sharded],
            "base": base,
            "lengths": lengths,
            "sizes": {name: len(rows) for name, rows in sets.items()},
            "load": ("-", "-"),
        }
    )
    out = capsys.readouterr().out
    assert "== targets (issue 32) ==" in out and "sisa, 2 shards" in out
    assert "A0." not in out and "Q0 of writer" not in out  # no record text in what it prints
