"""The training schedule of one slice (sisa/training/shard_job.py): epochs, minimum steps, order.
The planner's cost of that schedule is tested in tests/sisa/forgetting/test_planner.py."""

from __future__ import annotations

import math

from sisa.training.shard_job import sample_order, slice_samples


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
