"""The parts of sisa/tofu/scoring.py that need no model: the question sets, what a run cuts, and
one version's scores restricted to a smaller forget set (the benchmark's forget splits)."""

from __future__ import annotations

import math

import pytest
from sisa.storage.errors import ValidationError

from sisa import tofu
from sisa.tofu import metrics


def test_the_sets_hold_the_forget_authors_rows_and_utility_questions_spread_over_each_set():
    sets = tofu.load_sets([199, 198], questions=5)
    assert sets.forget_authors == [198, 199] and len(sets.forget) == 40
    assert {r["author"] for r in sets.forget} == {198, 199}
    assert (len(sets.retain), len(sets.real_authors), len(sets.world_facts)) == (5, 5, 5)
    everything = tofu.load_sets([180])
    assert (len(everything.retain), len(everything.real_authors), len(everything.world_facts)) == (400, 100, 117)
    # Spread, not the first ones: the retain file holds 20 questions per author in order, and its
    # first 10 would all be author 0's; 10 spread ones are 10 authors'.
    assert [r["author"] for r in sets.retain] == [0, 4, 8, 12, 16]
    assert sets.world_facts == [everything.world_facts[i] for i in (0, 23, 46, 70, 93)]
    subset = tofu.load_sets([199], questions=10, retain_authors=range(19))  # a 20-author subset's
    assert [r["author"] for r in subset.retain] == [0, 1, 3, 5, 7, 9, 11, 13, 15, 17]
    assert len({r["question"] for r in subset.retain}) == 10
    with pytest.raises(ValidationError, match="retain set"):
        tofu.load_sets([199], questions=10, retain_authors=[150])
    with pytest.raises(ValidationError, match=r"180-199.*not these: \[5\]"):
        tofu.load_sets([5, 199])


def test_a_run_says_what_it_cut():
    assert tofu.TofuSettings().cuts() == []
    cuts = tofu.TofuSettings(max_new_tokens=64, questions=40).cuts()
    assert cuts == [
        "greedy answers of at most 64 tokens (theirs: 200)",
        "40 questions of each utility set, spread evenly (theirs: 400 / 100 / 117)",
    ]


def _scores() -> tofu.TofuScores:
    parts = dict.fromkeys(metrics.UTILITY_PARTS, 0.5)
    ratios, losses, rouge = [0.5, 2.0, 1.0, 0.25], [0.0, math.log(2), math.log(4), 0.0], [1.0, 0.0, 0.5, 0.5]
    return tofu.TofuScores(
        model_version=3,
        model_utility=0.5,
        utility_parts=parts,
        forget_truth_ratio=metrics.truth_ratio_score(ratios, "closer_to_1_better"),
        forget_Q_A_Prob=metrics.probability(losses),
        forget_Q_A_ROUGE=0.5,
        forget_truth_ratios=ratios,
        forget_authors=[198, 199],
        questions={"forget": 4, "retain": 1, "real_authors": 1, "world_facts": 1},
        cuts=[],
        forget_question_authors=[198, 198, 199, 199],
        forget_answer_losses=losses,
        forget_rouge=rouge,
    )


def test_scores_restricted_to_some_authors_recompute_the_forget_measures_only():
    s = _scores().restrict([199])
    assert s.forget_authors == [199] and s.forget_truth_ratios == [1.0, 0.25]
    assert s.forget_truth_ratio == pytest.approx((1.0 + 0.25) / 2)  # min(tr, 1/tr)
    assert s.forget_Q_A_Prob == pytest.approx((0.25 + 1.0) / 2)
    assert s.forget_Q_A_ROUGE == 0.5 and s.questions["forget"] == 2
    assert s.model_utility == 0.5 and s.model_version == 3
    with pytest.raises(ValidationError, match="not in this forget set"):
        _scores().restrict([180])


def test_forget_quality_needs_the_same_forget_set():
    a = _scores()
    assert tofu.forget_quality(a, a) == 1.0
    with pytest.raises(ValidationError, match="the same forget set"):
        tofu.forget_quality(a.restrict([199]), a)


def test_the_evaluation_scores_on_the_threads_its_settings_ask_and_gives_them_back(monkeypatch):
    """`--threads` reaches every score and greedy answer, and torch's own setting is restored."""
    import torch

    from sisa.tofu import scoring

    seen: list[int] = []

    def losses(ens, pairs, settings):
        seen.append(torch.get_num_threads())
        return [1.0] * len(pairs)

    def answers(ens, questions, settings):
        seen.append(torch.get_num_threads())
        return ["an answer"] * len(questions)

    monkeypatch.setattr(scoring, "answer_losses", losses)
    monkeypatch.setattr(scoring, "greedy_answers", answers)
    before = torch.get_num_threads()
    sets = tofu.load_sets([199], questions=2)
    for threads in (1, 2):
        seen.clear()
        scores = tofu.evaluate_ensemble(object(), sets, tofu.TofuSettings(max_new_tokens=4, threads=threads))
        assert seen and set(seen) == {threads}
        assert scores.questions["forget"] == 20
        assert torch.get_num_threads() == before
    assert tofu.TofuSettings(threads=2).cuts() == []  # the same measures, not a cut
