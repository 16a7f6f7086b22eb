"""Training a store's pending slices into a new model version.

For each shard: the slices after the serving version's checkpoint (all of them the first time,
or with `from_scratch`). Shards with nothing new keep their checkpoint byte for byte. One job
per shard with pending slices runs (Ray or serially); only when every job succeeded is the
version committed (one atomic pointer write) and then mirrored to MLflow.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from sisa.config import SisaConfig
from sisa.data.formats import FORMAT_COLUMN, table_items
from sisa.lineage import checkpoints, versions
from sisa.model.base import base_model_fingerprint, load_tokenizer
from sisa.model.lengths import LengthReport, check_lengths, measure_records
from sisa.serving import mirror
from sisa.storage.schemas import LIVE
from sisa.storage.store import Store
from sisa.training import chain, scheduler
from sisa.training.shard_job import (
    ShardResult,
    ShardTask,
    pass_steps,
    slice_epochs,
    slice_steps,
    train_shard,
)


@dataclass
class TrainResult:
    model_version: int | None
    trained: list[ShardResult] = field(default_factory=list)
    reused: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0
    noop: bool = False
    batch_id: str | None = None  # queued deletion requests this run carried out first
    lengths: LengthReport | None = None  # the token lengths of the records this run trains


def plan_tasks(store: Store, cfg: SisaConfig, from_scratch: bool = False) -> tuple[list[ShardTask], dict[int, str]]:
    """`sisa train`'s plan: per shard, the pending slices after the serving checkpoint (all of them
    with `from_scratch`); plus the shards reused. Refused, naming every setting that differs, when
    the serving checkpoints were trained with another training config (sisa/training/chain.py)."""
    if from_scratch:
        return plan_shard_tasks(store, cfg, {}, fresh_chain=True)
    chain.refuse_other_config(store, cfg)
    return plan_shard_tasks(store, cfg, versions.shard_checkpoints(versions.current(store)))


def plan_shard_tasks(
    store: Store,
    cfg: SisaConfig,
    start: dict[int, str],
    affected: Collection[int] = (),
    through_last: bool = True,
    train_others: bool = True,
    fresh_chain: bool = False,
) -> tuple[list[ShardTask], dict[int, str]]:
    """The one shard-task planner (training, a request's retrain, a batch's): per shard, the task
    that continues from its checkpoint in `start` (none there: from slice 0), and the shards
    reused as they are. An `affected` shard (one a request hit; `start` holds its last clean
    checkpoint) retrains through its last slice, or with `through_last` False through the last
    slice a checkpoint sealed; every other shard trains its pending slices when `train_others`,
    else is reused. Shards with no slice, or with no record and no checkpoint, are left out.
    `fresh_chain`: every chain starts anew (`train --from-scratch`); each shard job checks the
    config it continues either way."""
    sealed = {} if through_last else checkpoints.sealed_slices(store)
    populated = {r["shard_id"] for r in store.index.counts().to_pylist()}
    tasks, reused = [], {}
    for shard_id in range(store.num_shards):
        slices = checkpoints.shard_slices(store, shard_id)
        if not slices or shard_id not in populated and shard_id not in start and shard_id not in affected:
            continue
        parent = start.get(shard_id)
        done = checkpoints.slice_of(parent) if parent else -1
        if shard_id in affected:
            last = max(slices) if through_last else sealed.get(shard_id, -1)
        else:
            last = max(slices) if train_others else done
        pending = tuple(range(done + 1, last + 1))
        if pending:
            purpose = "forget" if shard_id in affected else "train"
            tasks.append(
                ShardTask(store.uri, cfg.to_dict(), shard_id, pending, parent, purpose=purpose, fresh_chain=fresh_chain)
            )
        elif parent:
            reused[shard_id] = parent
    return tasks, reused


@dataclass
class TrainingCost:
    """Optimizer steps of training every shard from scratch on the store's live records, beside
    one adapter trained on the same records with the same config (slices of `sharding.slice_size`),
    both counted with the trainer's schedule (epochs, `training.min_steps_per_slice`)."""

    records: int
    steps: int
    one_adapter_steps: int
    # shards with a slice under AUTO_STEPS_PER_EPOCH steps a pass (the setting is the user's own):
    # shard_id → (its steps, its fewest steps a pass); and what `auto` would train instead
    short: dict[int, tuple[int, float]] = field(default_factory=dict)
    auto_steps: int | None = None

    @property
    def ratio(self) -> float | None:
        return self.steps / self.one_adapter_steps if self.one_adapter_steps else None

    def to_dict(self) -> dict:
        short = [{"shard_id": k, "steps": v[0], "fewest_steps_per_pass": v[1]} for k, v in sorted(self.short.items())]
        return {
            "records": self.records,
            "optimizer_steps": self.steps,
            "one_adapter_steps": self.one_adapter_steps,
            "ratio": self.ratio,
            "too_few_steps": short,
            "auto_steps": self.auto_steps,
        }


def _slices_steps(cfg: SisaConfig, counts: dict[int, int]) -> list[tuple[int, int, float]]:
    """(slice, steps, steps a pass) of each slice of one shard (slice → records) trained from scratch."""
    mode = cfg.sharding.slice_mode
    out = []
    for j in sorted(counts):
        n = sum(c for s, c in counts.items() if s <= j) if mode == "cumulative" else counts[j]
        if n:
            steps = slice_steps(n, j, cfg)
            out.append((j, steps, steps / slice_epochs(cfg.training.epochs, j, mode)))
    return out


def training_cost(store: Store, cfg: SisaConfig) -> TrainingCost:
    """What `sisa train --from-scratch` costs under `cfg`, against one adapter; with a
    `min_steps_per_slice` of the user's own, the shards it leaves under `auto`'s steps a pass."""
    shards: dict[int, dict[int, int]] = {}
    for r in store.index.counts(live_only=True).to_pylist():
        shards.setdefault(r["shard_id"], {})[r["slice_idx"]] = r["records"]
    records = sum(sum(c.values()) for c in shards.values())
    size = cfg.sharding.slice_size
    one = {j: min(size, records - j * size) for j in range(-(-records // size))}
    per_shard = {k: _slices_steps(cfg, c) for k, c in shards.items()}
    cost = TrainingCost(
        records, sum(s for v in per_shard.values() for _, s, _ in v), sum(s for _, s, _ in _slices_steps(cfg, one))
    )
    if cfg.training.min_steps_per_slice == "auto":
        return cost
    mode, epochs = cfg.sharding.slice_mode, cfg.training.epochs
    for k, slices in per_shard.items():
        # under auto's floor a pass: fewer than AUTO_STEPS_PER_EPOCH steps for each pass over a slice
        if any(steps < pass_steps(epochs, j, mode) for j, steps, _ in slices):
            cost.short[k] = (sum(s for _, s, _ in slices), min(p for _, _, p in slices))
    if cost.short:
        auto = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, min_steps_per_slice="auto"))
        cost.auto_steps = sum(s for c in shards.values() for _, s, _ in _slices_steps(auto, c))
    return cost


def prompt_blind_posterior(cfg: SisaConfig, result: TrainResult) -> str | None:
    """A note when the served posterior cannot see which shard knows a prompt: it weighs the
    shards by how well each predicts the prompt, and completion-only training of prompt-completion
    or chat records never teaches a shard its prompts (the demo's chat people on SmolLM2, S=4:
    14/16 facts recalled with loss_on all, 4/16 with completion). None when that is not the case."""
    t = cfg.training
    if cfg.serving.aggregation != "posterior" or t.loss_on != "completion" or t.prompt_loss_weight > 0:
        return None
    if not any(r.structured for r in result.trained):
        return None
    return (
        "note: these shards trained prompt-completion or chat records on their completions only "
        "(training.loss_on=completion, training.prompt_loss_weight=0), so the served posterior mixture has no "
        "evidence in a prompt of which shard knows its subject; train the prompts too, at a small weight "
        "(training.prompt_loss_weight, 0.1 by default) or in full (training.loss_on=all), with `sisa train "
        "--from-scratch`, or serve serving.aggregation=uniform (docs/getting-started/your-model-and-data.md)."
    )


def train(store: Store, cfg: SisaConfig, from_scratch: bool = False, reason: str = "train") -> TrainResult:
    """Train every pending slice and commit a version. The caller holds the store lock and has
    checked that no request owes work (`sisa.forgetting.runner.train_store` does both, and
    carries out a queued batch first)."""
    started = time.perf_counter()
    tasks, reused = plan_tasks(store, cfg, from_scratch)
    if not tasks:
        return TrainResult(store.current_version(), [], reused, time.perf_counter() - started, noop=True)
    # A failure raises ShardJobError naming the shards; nothing is committed. The base is
    # prepared (SmolLM2 converted) once here, not raced by every shard job.
    base_model_fingerprint(cfg.model)
    lengths = training_lengths(store, cfg, tasks)  # refused records fail here, before any job
    results = scheduler.run_shard_jobs(train_shard, tasks, cfg.scheduler, desc="train shards")
    shards = dict(reused)
    shards.update({r.shard_id: r.last_checkpoint_id for r in results})
    wall = time.perf_counter() - started
    entry = mirror.publish_version(store, cfg, shards, reason, results, wall, lengths=lengths)
    return TrainResult(entry.model_version, results, reused, time.perf_counter() - started, lengths=lengths)


def training_lengths(store: Store, cfg: SisaConfig, tasks: list[ShardTask]) -> LengthReport:
    """The token lengths of every record the tasks train (cumulative: each task's slices 0..last;
    incremental: its own slices), checked against `training.truncation` before anything trains.
    Records a queued request marked are left out: a deletion's never train again, and a
    rectification's new text was checked when it was filed. A shard whose records cannot be read
    is left to its job, which fails naming it."""
    ids: list[str] = []
    items: list = []
    index = store.index.table
    marked = index.filter(pc.not_equal(index["status"], LIVE))["record_id"]
    for task in tasks:
        wanted = range(task.slices[-1] + 1) if cfg.sharding.slice_mode == "cumulative" else task.slices
        try:
            tables = [
                store.read_slice(task.shard_id, sl, columns=["record_id", "text", FORMAT_COLUMN]) for sl in wanted
            ]
        except (OSError, pa.ArrowException):
            continue
        for table in filter(None, tables):
            if len(marked):
                table = table.filter(pc.invert(pc.is_in(table["record_id"], value_set=marked)))
            ids.extend(table["record_id"].to_pylist())
            items.extend(table_items(table))
    tokenizer, context = load_tokenizer(cfg.model)
    t = cfg.training
    report, encoded = measure_records(tokenizer, items, t.max_length, context, t.loss_on, t.truncation)
    check_lengths(ids, encoded, report)
    return report
