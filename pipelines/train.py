"""Train every shard's pending slices and commit a new model version.

    sisa train --config configs/tiny.yaml store.uri=/tmp/s

1. Plan: for each shard, the slices after the serving version's checkpoint (all of them the
   first time). Shards with nothing new keep their checkpoint byte for byte.
2. Run one job per shard with pending slices (Ray by default, or serially); each continues
   from its last checkpoint and saves one checkpoint per slice.
3. If every job succeeded: commit the model version (one atomic pointer write), then log it to
   MLflow (a run, a registered model version, the `serving` alias). A failed job commits nothing.
4. Say what the sharding costs: the optimizer steps of every shard from scratch against one
   adapter's on the same records; warn when `training.min_steps_per_slice` of the user's own leaves
   shards under `auto`'s steps a pass (recall falls with steps a shard: benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import sys

from sisa.pipelines.common import open_store, print_json, print_table

from sisa.api import SisaStore
from sisa.config import AUTO_STEPS_PER_EPOCH, SisaConfig
from sisa.training import TrainingCost, TrainResult, prompt_blind_posterior, training_cost


def run(cfg: SisaConfig, from_scratch: bool = False) -> TrainResult:
    return SisaStore(cfg).train(from_scratch)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="retrain every shard from slice 0 (e.g. after a training config change)",
    )


def cost_line(cost: TrainingCost) -> str:
    ratio = f" ({cost.ratio:.2f}x its cost)" if cost.ratio is not None else ""
    return (
        f"training cost: {cost.steps} optimizer steps over every shard from scratch; "
        f"one adapter on the same {cost.records} records: {cost.one_adapter_steps}{ratio}"
    )


def few_steps_warning(cfg: SisaConfig, cost: TrainingCost) -> str | None:
    """A warning with the numbers when the user's own `min_steps_per_slice` leaves shards short."""
    if not cost.short:
        return None
    fewest = min(cost.short.items(), key=lambda kv: kv[1][1])
    auto = f"{cost.auto_steps} steps" + (
        f", {cost.auto_steps / cost.one_adapter_steps:.2f}x one adapter's" if cost.one_adapter_steps else ""
    )
    return (
        f"warning: with training.min_steps_per_slice={cfg.training.min_steps_per_slice}, {len(cost.short)} of "
        f"{cfg.sharding.num_shards} shards train fewer than {AUTO_STEPS_PER_EPOCH} optimizer steps a pass over a slice "
        f"(shard {fewest[0]}: {fewest[1][0]} steps, {fewest[1][1]:.1f} a pass); shards that train little recall little "
        f"(benchmarks/README.md, utility.py). training.min_steps_per_slice=auto would train {auto} "
        "(`sisa train --from-scratch`)."
    )


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, from_scratch=args.from_scratch)
    cost = training_cost(open_store(cfg), cfg)
    warning = None if res.noop else few_steps_warning(cfg, cost)
    if warning:
        print(warning, file=sys.stderr)
    if args.json:
        print_json(
            {
                "model_version": res.model_version,
                "noop": res.noop,
                "wall_s": res.wall_s,
                "reused": res.reused,
                "trained": [
                    {
                        "shard_id": r.shard_id,
                        "slices": [s.__dict__ for s in r.slices],
                        "wall_s": r.wall_s,
                        "tokens_per_s": r.tokens_per_s,
                    }
                    for r in res.trained
                ],
                "cost": cost.to_dict(),
            }
        )
        return 0
    if res.noop:
        print(f"nothing to train: every shard's slices are trained; model version {res.model_version or '-'} serves")
        return 0
    rows = []
    for r in res.trained:
        rows.append(
            {
                "shard_id": r.shard_id,
                "slices": ",".join(str(s.slice_idx) for s in r.slices),
                "steps": sum(s.steps for s in r.slices),
                "loss": r.mean_loss,
                "tokens/s": round(r.tokens_per_s),
                "wall_s": round(r.wall_s, 2),
                "checkpoint": r.last_checkpoint_id,
            }
        )
    for shard_id, ckpt in sorted(res.reused.items()):
        rows.append({"shard_id": shard_id, "slices": "(reused)", "checkpoint": ckpt})
    print_table(
        sorted(rows, key=lambda r: r["shard_id"]),
        ["shard_id", "slices", "steps", "loss", "tokens/s", "wall_s", "checkpoint"],
    )
    print(f"committed model version {res.model_version} in {res.wall_s:.1f}s; it now serves")
    print(cost_line(cost))
    note = prompt_blind_posterior(cfg, res)
    if note:
        print(note, file=sys.stderr)
    return 0
