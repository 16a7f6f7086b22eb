"""Training shards: one shard's job (task in, result out), the scheduler that runs the jobs on Ray
or serially, and a training run that plans, trains and commits a version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sisa.lazy import exports

if TYPE_CHECKING:
    from sisa.training import run, scheduler, shard_job
    from sisa.training.run import (
        TrainingCost,
        TrainResult,
        plan_tasks,
        prompt_blind_posterior,
        train,
        training_cost,
    )
    from sisa.training.runtime import describe_runtime, replay_expectation, runtime_label
    from sisa.training.shard_job import ShardResult, ShardTask, train_shard

__all__ = [
    "ShardResult",
    "ShardTask",
    "TrainResult",
    "TrainingCost",
    "describe_runtime",
    "plan_tasks",
    "prompt_blind_posterior",
    "replay_expectation",
    "run",
    "runtime_label",
    "scheduler",
    "shard_job",
    "train",
    "train_shard",
    "training_cost",
]

__getattr__, __dir__ = exports(
    __name__,
    {
        "TrainingCost": "run",
        "TrainResult": "run",
        "plan_tasks": "run",
        "prompt_blind_posterior": "run",
        "train": "run",
        "training_cost": "run",
        "describe_runtime": "runtime",
        "replay_expectation": "runtime",
        "runtime_label": "runtime",
        "ShardResult": "shard_job",
        "ShardTask": "shard_job",
        "train_shard": "shard_job",
    },
)
