"""The deletion planner's cost of retraining (sisa/forgetting/planner.py): the passes the trainer
makes over a slice (tests/sisa/training/test_shard_job.py pins that schedule), minimum steps
included in both the retrain cost and the cost of training from scratch."""

from __future__ import annotations

import pytest

from sisa.forgetting.planner import plan_deletion, slice_cost
from sisa.training.shard_job import slice_epochs


@pytest.mark.parametrize("mode", ["cumulative", "incremental"])
def test_slice_cost_counts_the_passes_the_trainer_makes(mode):
    counts = {0: 3, 1: 3, 2: 0}
    for sl in counts:
        n = sum(c for s, c in counts.items() if s <= sl) if mode == "cumulative" else counts[sl]
        assert slice_cost(counts, sl, 1, mode) == pytest.approx(slice_epochs(1, sl, mode) * n)
        # With a minimum of 5 steps of 4 records, a small slice costs 20 record-passes.
        want = 0.0 if n == 0 else max(slice_epochs(1, sl, mode) * n, 20.0)
        assert slice_cost(counts, sl, 1, mode, batch_size=4, min_steps=5) == pytest.approx(want)


def test_plan_counts_the_minimum_steps_in_both_costs():
    counts = {0: {0: 8, 1: 8}, 1: {0: 8, 1: 8}}
    plain = plan_deletion("ids", [(0, 1)], counts, 2, 1, "incremental")
    padded = plan_deletion("ids", [(0, 1)], counts, 2, 1, "incremental", batch_size=4, min_steps=4)
    assert (plain.retrain_cost, plain.full_cost) == (8.0, 32.0)
    assert (padded.retrain_cost, padded.full_cost) == (16.0, 64.0)
