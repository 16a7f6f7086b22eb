"""TOFU's measures (sisa/tofu/metrics.py), each pinned against values computed by hand from
open-unlearning's definitions."""

from __future__ import annotations

import math

import pytest
from sisa.storage.errors import ValidationError

from sisa.tofu import metrics

LN2, LN4, LN8 = math.log(2), math.log(4), math.log(8)


def test_probability_is_the_mean_of_each_answers_geometric_mean_token_probability():
    # exp(-0) = 1 and exp(-ln 2) = 0.5: the set's probability is their mean, 0.75
    assert metrics.probability([0.0, LN2]) == pytest.approx(0.75)


def test_normalised_probability_divides_by_the_answer_plus_every_perturbed_answer():
    # P(a) = 0.5, perturbed 0.25 + 0.25 + 0.5 = 1.0: 0.5 / 1.5
    assert metrics.normalised_probability([LN2], [[LN4, LN4, LN2]]) == pytest.approx(1 / 3)
    # two questions: 1/3 and 0.5 / (0.5 + 0.5) = 1/2
    assert metrics.normalised_probability([LN2, LN2], [[LN4, LN4, LN2], [LN2, 50.0, 50.0]]) == pytest.approx(5 / 12)


def test_truth_ratio_takes_the_geometric_mean_of_the_perturbed_answers_over_the_correct_one():
    # perturbed losses ln2 and ln8: their mean ln4 gives 0.25 (an arithmetic mean of the
    # probabilities 0.5 and 0.125 would give 0.3125); over P(correct) = 0.5: 0.5
    assert metrics.truth_ratios([LN2], [[LN2, LN8]]) == pytest.approx([0.5])
    assert metrics.truth_ratios([LN4, 0.0], [[LN2, LN2], [LN4, LN4]]) == pytest.approx([2.0, 0.25])


def test_truth_ratio_scores_forget_and_utility_sets_their_own_way():
    ratios = [0.5, 2.0, 1.0]
    # forget: min(tr, 1/tr) → 0.5, 0.5, 1.0
    assert metrics.truth_ratio_score(ratios, "closer_to_1_better") == pytest.approx(2 / 3)
    # utility: max(0, 1 - tr) → 0.5, 0, 0
    assert metrics.truth_ratio_score(ratios, "true_better") == pytest.approx(1 / 6)
    with pytest.raises(ValidationError, match="aggregator"):
        metrics.truth_ratio_score(ratios, "prob_mean")


def test_rouge_l_recall_stems_and_counts_the_answers_tokens():
    # stemmed answer: the cat wa run home (5 tokens); the generation's LCS with it: cat run home
    assert metrics.rouge_l_recall(["cat run to home"], ["The cats were running home"]) == pytest.approx([0.6])
    assert metrics.rouge_l_recall(["Paris."], ["Paris"]) == [1.0]
    assert metrics.rouge_l_recall([""], ["Paris"]) == [0.0]
    with pytest.raises(ValidationError, match="one generation per answer"):
        metrics.rouge_l_recall(["a"], ["a", "b"])


def test_generations_are_cut_at_the_eos_text_and_stripped():
    assert metrics.clean_generation("  Paris<|im_end|>more", "<|im_end|>") == "Paris"
    assert metrics.clean_generation(" Paris. \n", "") == "Paris."
    assert metrics.clean_generation("Paris\nQ: next", "</s>", ["\nQ:"]) == "Paris"


def test_forget_quality_is_the_ks_p_value_between_the_two_samples_of_truth_ratios():
    same = [0.1, 0.4, 0.7, 0.9, 1.3]
    assert metrics.forget_quality(same, same) == 1.0
    # disjoint samples of 5 and 5: D = 1, exact two-sided p = 2 / C(10, 5) = 1/126
    assert metrics.forget_quality([1, 2, 3, 4, 5], [11, 12, 13, 14, 15]) == pytest.approx(1 / 126)
    # open-unlearning's other helper tests 1/tr: the same p-value (the order is only reversed)
    a, b = [0.2, 0.5, 0.9, 1.5], [0.3, 0.35, 2.0, 4.0, 5.0]
    assert metrics.forget_quality(a, b) == pytest.approx(metrics.forget_quality([1 / x for x in a], [1 / x for x in b]))


def test_model_utility_is_the_harmonic_mean_of_the_nine_parts():
    parts = dict.fromkeys(metrics.UTILITY_PARTS, 1.0) | {"wf_Q_A_ROUGE": 0.5}
    assert metrics.model_utility(parts) == pytest.approx(9 / (8 + 2))
    assert metrics.model_utility(parts | {"ra_Truth_Ratio": 0.0}) == 0.0
    with pytest.raises(ValidationError, match="missing"):
        metrics.model_utility({"retain_Q_A_Prob": 1.0})
    with pytest.raises(ValidationError, match="finite"):
        metrics.model_utility(parts | {"retain_Q_A_Prob": float("nan")})


def test_empty_or_mismatched_inputs_are_refused():
    with pytest.raises(ValidationError, match="non-empty"):
        metrics.probability([])
    with pytest.raises(ValidationError, match="one row of perturbed answers per question"):
        metrics.truth_ratios([LN2, LN2], [[LN2, LN2]])
