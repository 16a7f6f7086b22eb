"""The AUC and its seeded bootstrap interval (sisa/evidence/statistics.py) on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from sisa.evidence import auc, auc_interval


def test_auc_counts_pairs_and_ties_like_the_pairwise_definition():
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 5, 40).tolist(), rng.integers(0, 5, 30).tolist()  # many ties
    pairwise = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
    assert auc(pos, neg) == pytest.approx(pairwise)


def test_identical_distributions_give_an_interval_around_one_half():
    rng = np.random.default_rng(2)
    members, holdout = rng.normal(0, 1, 300).tolist(), rng.normal(0, 1, 300).tolist()
    lo, hi = auc_interval(members, holdout)
    assert lo < 0.5 < hi
    assert hi - lo < 0.1  # 300 against 300: the width sisa's MIA benchmark needs
    assert lo <= auc(members, holdout) <= hi


def test_separated_distributions_give_an_interval_far_from_one_half():
    rng = np.random.default_rng(3)
    lo, hi = auc_interval(rng.normal(2, 1, 200).tolist(), rng.normal(0, 1, 200).tolist())
    assert lo > 0.85 and hi <= 1.0
    lo, hi = auc_interval(rng.normal(-2, 1, 200).tolist(), rng.normal(0, 1, 200).tolist())
    assert hi < 0.15  # members scoring lower (over-unlearning) is far from 0.5 too


def test_the_interval_is_seeded_and_narrows_with_the_sample():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.3, 1, 400).tolist(), rng.normal(0, 1, 400).tolist()
    assert auc_interval(a, b) == auc_interval(a, b)
    assert auc_interval(a, b, seed=1) != auc_interval(a, b)
    small = auc_interval(a[:20], b[:20])
    large = auc_interval(a, b)
    assert small[1] - small[0] > 2 * (large[1] - large[0])


def test_empty_samples_and_bad_settings():
    assert auc([], [1.0]) is None and auc_interval([1.0], []) is None
    with pytest.raises(ValueError, match="resamples"):
        auc_interval([1.0], [0.0], resamples=0)
