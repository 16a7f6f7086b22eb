"""The training schedule of one slice (sisa/training/shard_job.py): epochs, minimum steps, order;
and the length its records are encoded at. The planner's cost of that schedule is tested in
tests/sisa/forgetting/test_planner.py."""

from __future__ import annotations

import math

import pytest

from sisa.config import ModelConfig, build_config
from sisa.forgetting.planner import plan_deletion, slice_cost
from sisa.model.base import load_tokenizer
from sisa.training.shard_job import (
    EncodingCache,
    SliceRecords,
    config_min_steps,
    min_slice_steps,
    sample_order,
    slice_epochs,
    slice_samples,
    slice_steps,
)


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


def test_auto_min_steps_is_a_full_slice_and_three_a_pass_from_the_config_alone():
    # The demo's shape (slices of 8, batch 8, 10 epochs): a pass over slice j is one batch, so
    # 3 steps a pass decide (30 at j=0), until the full cumulative slice takes more (j >= 3).
    assert [min_slice_steps("auto", j, 10, "cumulative", 8, 8) for j in range(6)] == [30, 20, 15, 16, 17, 18]
    assert min_slice_steps("auto", 4, 10, "incremental", 8, 8) == 30
    # Large slices: a full slice's own steps, so a full shard trains as if there were no minimum.
    assert [min_slice_steps("auto", j, 1, "cumulative", 8, 256) for j in range(3)] == [32, 43, 48]
    full = slice_samples(3 * 256, slice_epochs(1, 2, "cumulative"), 8)
    assert (
        math.ceil(full / 8) == 48
        and math.ceil(slice_samples(3 * 256, slice_epochs(1, 2, "cumulative"), 8, 48) / 8) == 48
    )
    # A number is itself; 0 is off.
    assert min_slice_steps(7, 3, 10, "cumulative", 8, 8) == 7 and min_slice_steps(0, 0, 1, "incremental", 4, 16) == 0
    # ceil(3 * 2e/(j+2)) in integers: 20 epochs at j=1 is 40 steps, not the float's 41.
    assert min_slice_steps("auto", 1, 20, "cumulative", 64, 1) == 40


@pytest.mark.parametrize("mode", ["cumulative", "incremental"])
def test_auto_min_steps_costs_in_the_plan_what_the_trainer_trains(mode):
    cfg = build_config({"sharding": {"slice_size": 8, "slice_mode": mode}, "training": {"epochs": 10, "batch_size": 8}})
    assert cfg.training.min_steps_per_slice == "auto"
    counts = {0: 6, 1: 2, 2: 0, 3: 8}  # a deletion left slices of 6, 2 and none
    for sl in counts:
        n = sum(c for s, c in counts.items() if s <= sl) if mode == "cumulative" else counts[sl]
        trained = slice_samples(n, slice_epochs(10, sl, mode), 8, config_min_steps(cfg, sl))
        assert slice_cost(counts, sl, 10, mode, 8, "auto", 8) == pytest.approx(
            max(slice_epochs(10, sl, mode) * n, trained) if n else 0.0
        )
        assert slice_steps(n, sl, cfg) == math.ceil(trained / 8)
    assert config_min_steps(cfg, 0) == 30  # whatever slice 0 holds
    plan = plan_deletion("ids", [(0, 1)], {0: counts, 1: {0: 8}}, 2, 10, mode, 8, "auto", 8)
    assert plan.retrain_cost == pytest.approx(sum(slice_cost(counts, j, 10, mode, 8, "auto", 8) for j in range(1, 4)))


def test_a_job_encodes_at_max_length_capped_by_the_models_context():
    """The cap `sisa train`'s length check measures with is the one the job trains at: a record
    over the tiny model's 512 positions is cut there, not at `training.max_length` 4096."""
    tokenizer, context = load_tokenizer(ModelConfig())
    cfg = build_config({"training": {"max_length": 4096}})
    records = SliceRecords(items=["Zed Quill keeps a diary. " * 40, "short"], ids=["long", "short"], shas=["a", "b"])
    long, short = EncodingCache(tokenizer, cfg, context).encode(records)
    assert (len(long.input_ids), long.cut) == (context, True)
    assert not short.cut and len(short.input_ids) < 10
