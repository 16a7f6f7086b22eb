"""The statistics of membership inference: ROC AUC and its bootstrap confidence interval.

An AUC alone says little without its sample: 4 forgotten records against 8 strangers give an
interval of about ±0.3 around whatever they measure. `auc_interval` resamples the members and
the holdout independently with replacement (a stratified bootstrap: each resample keeps both
sample sizes), recomputes the AUC and takes the percentile interval. It is seeded, so the same
scores always give the same interval. Records are resampled one by one: when several records
share a subject (and so a name), the interval is somewhat too narrow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
LEVEL = 0.95


def _auc_sorted(positives: np.ndarray, negatives_sorted: np.ndarray) -> np.ndarray:
    """AUC of each row of `positives` [R, n] against the matching row of sorted `negatives_sorted`
    [R, m]: per positive, the negatives below it plus half of those equal to it."""
    m = negatives_sorted.shape[1]
    below = np.stack([np.searchsorted(negatives_sorted[r], positives[r], "left") for r in range(len(positives))])
    upto = np.stack([np.searchsorted(negatives_sorted[r], positives[r], "right") for r in range(len(positives))])
    return (below + 0.5 * (upto - below)).sum(1) / (positives.shape[1] * m)


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """ROC AUC: the probability a positive scores above a negative (ties count half)."""
    if len(positives) == 0 or len(negatives) == 0:
        return None
    pos = np.asarray(positives, dtype=np.float64)[None, :]
    neg = np.sort(np.asarray(negatives, dtype=np.float64))[None, :]
    return float(_auc_sorted(pos, neg)[0])


def auc_interval(
    positives: Sequence[float],
    negatives: Sequence[float],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = LEVEL,
) -> tuple[float, float] | None:
    """The bootstrap percentile interval of the AUC at `level` (default 95%), from `resamples`
    stratified resamples drawn by a generator seeded with `seed`; None without both samples."""
    if len(positives) == 0 or len(negatives) == 0:
        return None
    if resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"resamples should be >= 1 and level in (0, 1), got {resamples} and {level}")
    rng = np.random.default_rng(seed)
    pos = np.asarray(positives, dtype=np.float64)
    neg = np.asarray(negatives, dtype=np.float64)
    p = pos[rng.integers(0, len(pos), size=(resamples, len(pos)))]
    n = np.sort(neg[rng.integers(0, len(neg), size=(resamples, len(neg)))], axis=1)
    aucs = _auc_sorted(p, n)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(aucs, [tail, 1.0 - tail])
    return float(lo), float(hi)
