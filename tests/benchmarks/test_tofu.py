"""benchmarks/tofu.py's choices that need no model: the author subset keeps TOFU's order and
forget authors, and the published figures beside ours are theirs as docs/repro.md prints them.
The run itself (minutes even on the tiny model) is recorded in benchmarks/README.md."""

from __future__ import annotations

import sys

import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks/tofu.py imports its _common from there
from benchmarks import tofu as bench  # noqa: E402


def test_a_subset_keeps_tofus_first_retain_authors_and_its_last_forget_authors():
    retain, forget = bench.pick_authors(40, 4)
    assert retain == list(range(36)) and forget == [196, 197, 198, 199]
    with pytest.raises(SystemExit):
        bench.pick_authors(4, 4)
    with pytest.raises(SystemExit):
        bench.pick_authors(40, 21)


def test_the_published_figures_are_open_unlearnings_llama_3_2_1b_rows():
    assert bench.THEIRS["forget10"]["Finetuned"][:2] == (1.66e-21, 0.60)
    assert bench.THEIRS["forget10"]["NPO"][:2] == (0.02, 0.46)
    assert bench.THEIRS["forget05"]["NPO"][:2] == (0.14, 0.45)
    assert bench.THEIRS["forget01"]["NPO"][:2] == (0.92, 0.56)
    assert {split: set(rows) for split, rows in bench.THEIRS.items()} == {
        s: {"Finetuned", "Retain", "NPO", "GradDiff", "RMU"} for s in ("forget01", "forget05", "forget10")
    }
    assert bench.theirs_for(2 / 40) == "forget05" and bench.theirs_for(4 / 40) == "forget10"
    assert bench.theirs_for(2 / 200) == "forget01"


def test_the_default_run_is_the_documented_subset_with_the_shipped_loss(monkeypatch, tmp_path):
    """`benchmarks/tofu.py` with no options runs the subset benchmarks/README.md reports: 20
    authors forgetting 1 and 2, SmolLM2 trained 3 epochs of incremental slices of 50 with the
    base config's loss (completion, the prompt at 0.1), not the demo config's loss_on all."""
    from sisa.config import SisaConfig

    monkeypatch.setattr(sys, "argv", ["tofu.py"])
    args = bench.parse_args()
    assert (args.model, args.authors, args.forget, args.questions, args.max_new_tokens) == (
        "smollm2",
        20,
        "1,2",
        10,
        32,
    )
    cfg = bench.config_for(args, str(tmp_path / "s"), [])
    t, shipped = cfg.training, SisaConfig().training
    assert (t.loss_on, t.prompt_loss_weight) == (shipped.loss_on, shipped.prompt_loss_weight)
    assert (t.epochs, cfg.sharding.slice_mode, cfg.sharding.slice_size, t.max_length) == (3, "incremental", 50, 256)
    monkeypatch.setattr(sys, "argv", ["tofu.py", "training.loss_on=all"])  # an override still wins
    assert bench.config_for(bench.parse_args(), str(tmp_path / "s"), []).training.loss_on == "all"
