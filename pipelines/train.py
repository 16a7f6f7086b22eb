"""Train every shard's pending slices and commit a new model version.

    sisa train --config configs/tiny.yaml store.uri=/tmp/s

1. Plan: for each shard, the slices after the serving version's checkpoint (all of them the
   first time). Shards with nothing new keep their checkpoint byte for byte.
2. Run one job per shard with pending slices (Ray by default, or serially); each continues
   from its last checkpoint and saves one checkpoint per slice.
3. If every job succeeded: commit the model version (one atomic pointer write), then log it to
   MLflow (a run, a registered model version, the `serving` alias). A failed job commits nothing.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from pipelines.common import open_store, print_json, print_table
from sisa import scheduler, versions
from sisa.checkpoints import read_manifest
from sisa.config import SisaConfig
from sisa.model import base_model_fingerprint
from sisa.trainer import ShardResult, ShardTask, train_shard
from storage import ledgers
from storage.errors import RefusedError
from storage.store import Store, checkpoint_slice


@dataclass
class TrainResult:
    model_version: int | None
    trained: list[ShardResult] = field(default_factory=list)
    reused: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0
    noop: bool = False


def plan_tasks(store: Store, cfg: SisaConfig, from_scratch: bool = False) -> tuple[list[ShardTask], dict[int, str]]:
    """Per shard: the pending slices and the checkpoint to continue from; plus the shards reused."""
    serving = {} if from_scratch else versions.shard_checkpoints(versions.current(store))
    counts = store.index.counts().to_pylist()
    populated = {r["shard_id"] for r in counts}
    tasks, reused = [], {}
    for shard_id in range(store.num_shards):
        slices = store.slices(shard_id)
        if not slices or shard_id not in populated and shard_id not in serving:
            continue
        parent = serving.get(shard_id)
        done = checkpoint_slice(parent) if parent else -1
        if parent:
            fp = read_manifest(store, shard_id, parent)["training_fingerprint"]
            if fp != cfg.training_fingerprint():
                raise RefusedError(
                    f"shard {shard_id}'s checkpoint {parent} was trained with a different training config "
                    f"(fingerprint {fp} vs {cfg.training_fingerprint()}); continuing would mix configs. "
                    "Restore the config, or run `sisa train --from-scratch` to retrain every shard."
                )
        pending = tuple(s for s in range(done + 1, max(slices) + 1))
        if pending:
            tasks.append(ShardTask(store.uri, cfg.to_dict(), shard_id, pending, parent))
        elif parent:
            reused[shard_id] = parent
    return tasks, reused


def run(cfg: SisaConfig, from_scratch: bool = False, reason: str = "train") -> TrainResult:
    import time

    started = time.perf_counter()
    store = open_store(cfg)
    with store.lock("train", cfg.store.lock_timeout_s):
        open_requests = [r["request_id"] for r in ledgers.list_requests(store.fs) if r["status"] not in ("completed", "failed")]
        if open_requests:
            raise RefusedError(
                f"deletion request(s) {', '.join(open_requests)} are still open; training now could bring "
                "deleted data back. Run `sisa forget --resume --config ...` first."
            )
        # 1. plan
        tasks, reused = plan_tasks(store, cfg, from_scratch)
        if not tasks:
            return TrainResult(store.current_version(), [], reused, time.perf_counter() - started, noop=True)
        # 2. train (a failure raises ShardJobError naming the shards; nothing is committed).
        # The base is prepared (SmolLM2 converted) once here, not raced by every shard job.
        base_model_fingerprint(cfg.model)
        results = scheduler.run_shard_jobs(train_shard, tasks, cfg.scheduler, desc="train shards")
        # 3. commit, then mirror to MLflow
        shards = dict(reused)
        shards.update({r.shard_id: r.last_checkpoint_id for r in results})
        entry = versions.commit_version(
            store, shards, reason, cfg.training_fingerprint(), cfg.model.name, aggregation=cfg.serving.aggregation
        )
        wall = time.perf_counter() - started
        track_version(store, cfg, entry, results, wall)
    return TrainResult(entry["model_version"], results, reused, wall)


def track_version(store: Store, cfg: SisaConfig, entry: dict, results: list[ShardResult], wall_s: float) -> None:
    """Log a committed version to MLflow and move the alias; never record text, only counts."""
    if not cfg.tracking.enabled:
        return
    from sisa.tracking import Tracker

    tracker = Tracker(cfg.tracking, store.fs.local_path(""))
    params = {
        "config_fingerprint": cfg.fingerprint(),
        "training_fingerprint": cfg.training_fingerprint(),
        "num_shards": store.num_shards,
        "slice_size": cfg.sharding.slice_size,
        "slice_mode": cfg.sharding.slice_mode,
        "base_model": cfg.model.name,
        "lora_r": cfg.lora.r,
        "epochs": cfg.training.epochs,
        "lr": cfg.training.lr,
        "slices": sum(len(store.slices(s)) for s in range(store.num_shards)),
    }
    metrics: dict[str, float] = {"wall_time_s": wall_s, "shards_trained": float(len(results))}
    for r in results:
        if r.mean_loss is not None:
            metrics[f"shard_{r.shard_id}_loss"] = r.mean_loss
        metrics[f"shard_{r.shard_id}_tokens_per_s"] = r.tokens_per_s
        metrics[f"shard_{r.shard_id}_wall_s"] = r.wall_s
    tags = {
        "model_version": str(entry["model_version"]),
        "reason": entry["reason"],
        "approximate": str(entry.get("approximate", False)).lower(),
    }
    if entry.get("request_id"):
        tags["request_id"] = entry["request_id"]
    info = tracker.log_model_version(entry["model_version"], entry["reason"], params, metrics, tags)
    if store.current_version() == entry["model_version"]:
        tracker.set_serving_alias(entry["model_version"])
    entry["mlflow"] = {k: str(v) for k, v in info.items()}
    versions.update_version(store, entry)


def ensure_tracked(store: Store, cfg: SisaConfig) -> None:
    """Log every active version MLflow does not know yet, then point the alias at the current one."""
    if not cfg.tracking.enabled:
        return
    from sisa.tracking import Tracker

    for entry in versions.all_versions(store):
        if entry["status"] == versions.ACTIVE and "mlflow" not in entry:
            track_version(store, cfg, entry, [], 0.0)
    current = store.current_version()
    if current is not None:
        Tracker(cfg.tracking, store.fs.local_path("")).set_serving_alias(current)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from-scratch", action="store_true", help="retrain every shard from slice 0 (e.g. after a training config change)")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, from_scratch=args.from_scratch)
    if args.json:
        print_json(
            {
                "model_version": res.model_version,
                "noop": res.noop,
                "wall_s": res.wall_s,
                "reused": res.reused,
                "trained": [
                    {"shard_id": r.shard_id, "slices": [s.__dict__ for s in r.slices], "wall_s": r.wall_s, "tokens_per_s": r.tokens_per_s}
                    for r in res.trained
                ],
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
    print_table(sorted(rows, key=lambda r: r["shard_id"]), ["shard_id", "slices", "steps", "loss", "tokens/s", "wall_s", "checkpoint"])
    print(f"committed model version {res.model_version} in {res.wall_s:.1f}s; it now serves")
    return 0
