"""Model-version bookkeeping in MLflow: a run, a loadable logged model and a registered version
per committed version, and the `serving` alias on the current one. Never text: only counts,
fingerprints, timings, and the model's shard adapters with their manifest (sisa/serving/bundle.py).

The store's version ledger is the truth; MLflow mirrors it. `publish_version` is how every
version is made (training, a request's relief, bridge or exact version, a batch's): committed to
the ledger, then logged. `ensure_tracked` repairs the mirror after a crash or an MLflow outage (a
version committed but not yet logged).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sisa.config import SisaConfig
from sisa.lineage.checkpoints import shard_slices
from sisa.lineage.versions import (
    ModelVersion,
    VersionStatus,
    all_versions,
    commit_version,
    record_tracking,
)
from sisa.model.base import base_model_folder
from sisa.model.lengths import LengthReport
from sisa.serving import bundle
from sisa.storage.store import Store


def _tracker(store: Store, cfg: SisaConfig):
    from sisa.serving.tracking import Tracker  # MLflow loads only when tracking is on

    return Tracker(cfg.tracking, store.fs.local_path(""))


def publish_version(
    store: Store,
    cfg: SisaConfig,
    shards: dict[int, str],
    reason: str,
    results: Sequence[Any] = (),
    wall_s: float = 0.0,
    committed: Callable[[ModelVersion], None] | None = None,
    lengths: LengthReport | None = None,
    **commit: Any,
) -> ModelVersion:
    """Commit a version of these shard checkpoints under this config's training fingerprint, base
    model and aggregation (`commit`: the other arguments of `versions.commit_version`), then log it
    to MLflow. `committed(entry)` runs between the two: what a caller must remember of the version
    is kept before MLflow is asked, so an MLflow outage loses nothing (`ensure_tracked` logs it later).
    `lengths`: the token lengths of the records trained, logged as `length_*` metrics (counts only)."""
    fingerprint, aggregation = cfg.training_fingerprint(), cfg.serving.aggregation
    entry = commit_version(store, shards, reason, fingerprint, cfg.model.name, aggregation=aggregation, **commit)
    if committed is not None:
        committed(entry)
    track_version(store, cfg, entry, results, wall_s, lengths)
    return entry


def track_version(
    store: Store,
    cfg: SisaConfig,
    entry: ModelVersion,
    results: Sequence[Any],
    wall_s: float,
    lengths: LengthReport | None = None,
) -> None:
    """Log a committed version to MLflow and move the alias; never record text, only counts."""
    if not cfg.tracking.enabled:
        return
    tracker = _tracker(store, cfg)
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
        "lr_scheduler": cfg.training.lr_scheduler,
        "warmup_ratio": cfg.training.warmup_ratio,
        "batch_size": cfg.training.batch_size,
        "gradient_accumulation_steps": cfg.training.gradient_accumulation_steps,
        "max_length": cfg.training.max_length,
        "gradient_checkpointing": cfg.training.gradient_checkpointing,
        "loss_on": cfg.training.loss_on,
        "prompt_loss_weight": cfg.training.prompt_loss_weight,
        "aggregation": entry.aggregation,
        "slices": sum(len(shard_slices(store, s)) for s in range(store.num_shards)),
    }
    metrics: dict[str, float] = {"wall_time_s": wall_s, "shards_trained": float(len(results))}
    for r in results:
        if r.mean_loss is not None:
            metrics[f"shard_{r.shard_id}_loss"] = r.mean_loss
        metrics[f"shard_{r.shard_id}_tokens_per_s"] = r.tokens_per_s
        metrics[f"shard_{r.shard_id}_wall_s"] = r.wall_s
    curves = step_curves(results)
    if lengths is not None:
        # length_over: records longer than max_length, cut (truncation: cut) or refused before training
        metrics.update(lengths.metrics())
        params["max_length"] = lengths.max_length
        params["truncation"] = lengths.truncation
    tags = {
        "model_version": str(entry.model_version),
        "reason": entry.reason,
        "approximate": str(entry.approximate).lower(),
    }
    if entry.request_id:
        tags["request_id"] = entry.request_id
    if tracker.find_registered_version(entry.model_version) is not None:  # a repeated call
        info = tracker.log_model_version(entry.model_version, entry.reason, params, metrics, tags, curves=curves)
    else:
        base_dir = base_model_folder(cfg.model) if cfg.tracking.log_base_model else None
        with bundle.staged_bundle(store, cfg, entry) as folder:
            info = tracker.log_model_version(
                entry.model_version,
                entry.reason,
                params,
                metrics,
                tags,
                model_artifacts=bundle.model_artifacts(folder, base_dir),
                curves=curves,
            )
    if store.current_version() == entry.model_version:
        tracker.set_serving_alias(entry.model_version)
    record_tracking(store, entry, {k: str(v) for k, v in info.items()})


def step_curves(results: Sequence[Any]) -> dict[str, list[float]]:
    """Each trained shard's loss and learning rate at every optimizer step of this run, its slices
    one after another."""
    curves: dict[str, list[float]] = {}
    for r in results:
        for s in getattr(r, "slices", []):
            curves.setdefault(f"shard_{r.shard_id}_step_loss", []).extend(getattr(s, "losses", []))
            curves.setdefault(f"shard_{r.shard_id}_step_lr", []).extend(getattr(s, "lrs", []))
    return {k: v for k, v in curves.items() if v}


def ensure_tracked(store: Store, cfg: SisaConfig) -> None:
    """Log every active version MLflow does not know yet, then point the alias at the current one."""
    if not cfg.tracking.enabled:
        return
    for entry in all_versions(store):
        if entry.status == VersionStatus.ACTIVE and entry.mlflow is None:
            track_version(store, cfg, entry, [], 0.0)
    current = store.current_version()
    if current is not None:
        _tracker(store, cfg).set_serving_alias(current)


def move_alias(store: Store, cfg: SisaConfig, model_version: int) -> None:
    if cfg.tracking.enabled:
        _tracker(store, cfg).set_serving_alias(model_version)


def purge_versions(store: Store, cfg: SisaConfig, model_versions: list[int]) -> None:
    """Delete the MLflow runs and registered versions of purged model versions."""
    if not cfg.tracking.enabled:
        return
    _tracker(store, cfg).purge_model_versions(model_versions)


def registered_version_exists(store: Store, cfg: SisaConfig, model_version: int) -> bool | None:
    """Whether MLflow still holds a registered version (None when tracking is off)."""
    if not cfg.tracking.enabled:
        return None
    return _tracker(store, cfg).find_registered_version(model_version) is not None
