"""`sisa eval --tofu` on a tiny store trained on TOFU's chat records (the random tiny model: the
numbers mean nothing, the plumbing and the table's shape are what is checked)."""

from __future__ import annotations

import json

import pytest
from scipy import stats
from sisa.pipelines.cli import main

from sisa import tofu
from tests.helpers import cli_args

pytestmark = pytest.mark.slow

# Two retain authors and forget01's two, as TOFU orders them: the forget authors arrive last.
ROWS = [tofu.chat_record(r) for r in tofu.read_config("full") if r["author"] in (0, 1, 198, 199)]


def test_eval_tofu_gives_the_table_and_forget_quality_against_a_reference(tmp_path, make_trained_store, capsys):
    make_trained_store(ROWS, "training.max_length=256")
    args = [*cli_args(tmp_path / "s", "training.max_length=256"), "--tofu", "forget01"]
    small = ["--questions", "3", "--max-new-tokens", "4"]
    assert main(["eval", *args, *small, "--reference-version", "1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    s, ref = res["scores"], res["reference"]
    assert s["model_version"] == 1 and ref["model_version"] == 1
    assert sorted(s["utility_parts"]) == sorted(tofu.UTILITY_PARTS)  # print_json sorts keys
    assert s["model_utility"] == pytest.approx(stats.hmean(list(s["utility_parts"].values())))
    assert all(0 <= v <= 1 for v in s["utility_parts"].values())
    assert s["forget_authors"] == [198, 199] and len(s["forget_truth_ratios"]) == 40
    assert s["questions"] == {"forget": 40, "retain": 3, "real_authors": 3, "world_facts": 3}
    # A version against itself: the same truth ratios, so the KS test cannot tell them apart.
    assert ref["forget_truth_ratios"] == s["forget_truth_ratios"]
    assert res["forget_quality"] == 1.0
    assert len(res["cuts"]) == 2 and "4 tokens" in res["cuts"][0]

    # The reference as another store's serving version (here the same store, by its uri), the
    # forget set narrowed to one author, and the table for people.
    assert main(["eval", *args, *small, "--forget-authors", "199", "--reference-store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "forget authors [199]" in out and "forget quality" in out and "model_utility" in out
    assert "cut: 3 questions of each utility set, spread evenly" in out

    # Bad input: a clear error, exit 4, and nothing printed as a table.
    assert main(["eval", *args, *small, "--forget-authors", "5"]) == 4
    assert "180-199" in capsys.readouterr().err
    assert main(["eval", *cli_args(tmp_path / "s")]) == 4
    assert "--tofu SPLIT" in capsys.readouterr().err
