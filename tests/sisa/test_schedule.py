"""The training schedule of one slice, and the planner's cost of it: epochs, minimum steps, order."""

from __future__ import annotations

import math

import pytest

from sisa.forgetting.planner import plan_deletion, slice_cost
from sisa.training.shard_job import sample_order, slice_epochs, slice_samples


def test_slice_samples_round_the_epochs_then_reach_the_minimum_steps():
    assert slice_samples(0, 1.0, 4, min_steps=10) == 0  # an empty slice trains nothing
    assert slice_samples(10, 1.0, 4) == 10
    assert slice_samples(3, 0.1, 4) == 1  # at least one record
    assert slice_samples(10, 1.0, 4, min_steps=2) == 10  # already 3 steps of 4
    assert slice_samples(3, 1.0, 4, min_steps=5) == 20  # 5 full batches over 3 records
    for n, epochs, bs, m in [(3, 1.0, 4, 5), (7, 0.5, 3, 4), (1, 2.0, 8, 1), (50, 1.0, 8, 2)]:
        assert math.ceil(slice_samples(n, epochs, bs, m) / bs) >= m


def test_sample_order_repeats_seeded_passes_and_only_extends():
    short = sample_order(3, 3, seed=7)
    long = sample_order(3, 20, seed=7)
    assert sorted(short) == [0, 1, 2] and len(long) == 20
    assert long[:3] == short  # more steps continue the same seeded stream
    assert all(sorted(long[i : i + 3]) == [0, 1, 2] for i in range(0, 18, 3))  # whole passes
    assert sample_order(3, 20, seed=7) == long and sample_order(3, 20, seed=8) != long
    assert sample_order(0, 5, seed=7) == []


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
