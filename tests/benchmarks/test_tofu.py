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
