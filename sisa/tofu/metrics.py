"""TOFU's measures, as locuslab/open-unlearning computes them (`open-unlearning/src/evals/metrics/` and
`open-unlearning/configs/eval/tofu_metrics/`), written as pure functions over what a model gives: each
answer's mean token NLL (`avg_loss`: the mean, over the answer's labelled tokens, of -log p) and
the greedy answers' texts.

- probability of an answer: exp(-avg_loss), the geometric mean of its tokens' probabilities;
  a set's value is the mean over its questions (`probability`). For real authors and world facts
  it is normalised against the perturbed answers: P(a) / (P(a) + sum_j P(perturbed_j) + 1e-10)
  (`normalised_probability`, their `probability_w_options`).
- truth ratio of a question: P(wrong) / (P(correct) + 1e-10), with P(wrong) = exp(-mean_j
  avg_loss_j) over the perturbed answers (the mean of their losses, so the geometric mean of
  their probabilities) and, for the forget and retain sets, the paraphrased answer as the
  correct one; for real authors and world facts, the answer itself (`truth_ratios`).
  A set's score: `closer_to_1_better` = mean(min(tr, 1 / (tr + 1e-10))) on the forget set
  (reported as forget_truth_ratio), `true_better` = mean(max(0, 1 - tr)) in model utility.
- ROUGE-L recall of the greedy answer against the answer: rouge_score's `rougeL` with the Porter
  stemmer, `score(answer, generation).recall`; the generation cut at the first eos text and
  stripped (`rouge_l_recall`).
- forget quality: the p-value of scipy's two-sample KS test between the forget set's truth
  ratios under the evaluated model and under a retain model (`forget_quality`).
- model utility: scipy's harmonic mean of the 9 values of `UTILITY_PARTS` (`model_utility`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from rouge_score import rouge_scorer
from scipy import stats

from sisa.storage.errors import ValidationError

EPS = 1e-10  # open-unlearning's guard in every ratio
TRUTH_RATIO_AGGREGATORS = ("closer_to_1_better", "true_better")
# model utility's parts, in their order (open-unlearning/configs/eval/tofu_metrics/model_utility.yaml)
UTILITY_PARTS = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)


def _array(values: Sequence[float] | np.ndarray, what: str, ndim: int = 1) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != ndim or arr.shape[0] == 0:
        raise ValidationError(f"{what} should be a non-empty array of {ndim} dimension(s), got shape {arr.shape}")
    return arr


def answer_probabilities(avg_losses: Sequence[float]) -> np.ndarray:
    """exp(-avg_loss) per answer: the geometric mean of its tokens' probabilities."""
    return np.exp(-_array(avg_losses, "avg_losses"))


def probability(avg_losses: Sequence[float]) -> float:
    """A set's probability: the mean over its questions of exp(-avg_loss)."""
    return float(np.mean(answer_probabilities(avg_losses)))


def normalised_probability(correct_losses: Sequence[float], wrong_losses: Sequence[Sequence[float]]) -> float:
    """Mean over questions of P(a) / (P(a) + sum_j P(perturbed_j) + 1e-10); `wrong_losses` is
    [questions, perturbed answers] of avg_loss."""
    correct = answer_probabilities(correct_losses)
    wrong = np.exp(-_array(wrong_losses, "wrong_losses", 2)).sum(axis=1)
    _same_questions(correct, wrong)
    return float(np.mean(correct / (correct + wrong + EPS)))


def truth_ratios(correct_losses: Sequence[float], wrong_losses: Sequence[Sequence[float]]) -> np.ndarray:
    """Per question: exp(-mean_j wrong_loss_j) / (exp(-correct_loss) + 1e-10)."""
    correct = answer_probabilities(correct_losses)
    wrong = np.exp(-_array(wrong_losses, "wrong_losses", 2).mean(axis=1))
    _same_questions(correct, wrong)
    return wrong / (correct + EPS)


def truth_ratio_score(ratios: Sequence[float], aggregator: str) -> float:
    """A set's truth-ratio score: `closer_to_1_better` (forget set: a model that cannot tell the
    paraphrase from the perturbed answers scores 1) or `true_better` (utility: 1 - tr, floored at 0)."""
    tr = _array(ratios, "truth ratios")
    if aggregator == "closer_to_1_better":
        return float(np.mean(np.minimum(tr, 1 / (tr + EPS))))
    if aggregator == "true_better":
        return float(np.mean(np.maximum(0, 1 - tr)))
    raise ValidationError(
        f"truth ratio aggregator should be one of {', '.join(TRUTH_RATIO_AGGREGATORS)}, got {aggregator!r}"
    )


def clean_generation(text: str, eos_text: str = "", stopwords: Sequence[str] = ()) -> str:
    """The generation as open-unlearning scores it: cut before the first eos text or stopword,
    stripped."""
    for word in (eos_text, *stopwords):
        if word and word in text:
            text = text.split(word)[0]
    return text.strip()


@functools.cache
def _rouge_l() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generations: Sequence[str], answers: Sequence[str]) -> list[float]:
    """Per question: rouge_score's ROUGE-L recall of the (cleaned) generation against the answer,
    with the Porter stemmer, as open-unlearning's `eval_text_similarity` scores it."""
    if len(generations) != len(answers):
        raise ValidationError(f"one generation per answer: {len(generations)} generations, {len(answers)} answers")
    return [float(_rouge_l().score(a, g)["rougeL"].recall) for g, a in zip(generations, answers, strict=True)]


def forget_quality(ratios: Sequence[float], reference_ratios: Sequence[float]) -> float:
    """The p-value of the two-sample KS test between the forget set's truth ratios under the
    evaluated model and under a retain model (1.0 when the two samples are the same)."""
    tr = _array(ratios, "truth ratios")
    ref = _array(reference_ratios, "reference truth ratios")
    return float(stats.ks_2samp(tr, ref).pvalue)


def model_utility(parts: Mapping[str, float]) -> float:
    """scipy's harmonic mean of the 9 parts of `UTILITY_PARTS` (0 when any part is 0)."""
    missing = [p for p in UTILITY_PARTS if p not in parts]
    extra = sorted(set(parts) - set(UTILITY_PARTS))
    if missing or extra:
        raise ValidationError(
            f"model utility needs exactly the parts {', '.join(UTILITY_PARTS)}; missing {missing}, unknown {extra}"
        )
    values = [float(parts[p]) for p in UTILITY_PARTS]
    bad = [p for p, v in zip(UTILITY_PARTS, values, strict=True) if not (v >= 0 and np.isfinite(v))]
    if bad:
        raise ValidationError(f"model utility's parts should be finite and >= 0; not so: {bad}")
    return float(stats.hmean(values))


def _same_questions(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValidationError(f"one row of perturbed answers per question: {a.shape[0]} questions, {b.shape[0]} rows")
