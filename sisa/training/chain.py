"""One training config per store: a shard's chain of checkpoints continues only under the config
it was trained with, so every version is one that a single config reproduces.

Every checkpoint records the settings its bytes depend on (`SisaConfig.training_sections()`) and
their fingerprint; every version records the fingerprint too. Two rules follow:

- The shard job checks (`check_continuation`): a slice is trained on top of a checkpoint only under
  that checkpoint's fingerprint, and a shard retrained from slice 0 into a store that already
  serves a version only under that version's fingerprint. Whatever planned the job, a mixed
  version is never trained.
- Requests (forget, rectify, a batch, the service's worker) and `verify --replay` carry out the
  store's chain whatever config they were given: `chain_config` puts the store's recorded training
  settings into the config, and says which keys it changed. `sisa train` refuses instead
  (`refuse_other_config`): training new data under another config is a decision, and
  `sisa train --from-scratch` is how to make it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sisa.config import TRAINER_VERSION, SisaConfig, build_config, with_later_keys
from sisa.lineage import checkpoints, versions
from sisa.storage.errors import RefusedError
from sisa.storage.store import Store

START_OVER = "or retrain every shard under the new config with `sisa train --from-scratch`"


def _flat(sections: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in sections.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_keys(recorded: dict[str, Any] | None, cfg: SisaConfig) -> list[str]:
    """`key: recorded vs given` for every training setting that differs (none known when the
    checkpoint predates recorded configs)."""
    if recorded is None:
        return []
    recorded = {**recorded, "training": with_later_keys(recorded.get("training", {}))}
    was, now = _flat(recorded), _flat(cfg.training_sections())
    return [
        f"{k}: {json.dumps(was.get(k))} (the store's) vs {json.dumps(now.get(k))} (given)"
        for k in sorted(set(was) | set(now))
        if was.get(k) != now.get(k) and k in was
    ]


def serving_fingerprint(store: Store) -> str | None:
    """The training fingerprint of the version the store serves; None when it serves no adapter."""
    current = versions.current(store)
    if current is None or not current.shards or not current.training_fingerprint:
        return None
    return current.training_fingerprint


def recorded_sections(store: Store) -> dict[str, Any] | None:
    """The training settings the serving version's checkpoints recorded (None: none recorded)."""
    current = versions.current(store)
    for shard_id, cid in sorted(versions.shard_checkpoints(current).items()):
        if checkpoints.is_approximate(cid):
            continue
        recorded = checkpoints.read_manifest(store, shard_id, cid).get("training_config")
        if recorded is not None:
            return recorded
    return None


def _describe(keys: list[str], recorded_fp: str, given_fp: str) -> str:
    if keys:
        return "; ".join(keys)
    return f"training fingerprint {recorded_fp} (the store's) vs {given_fp} (given)"


def refuse_other_config(store: Store, cfg: SisaConfig) -> None:
    """`sisa train`: refuse to continue the serving chain under another training config, naming
    every setting that differs and how to start over."""
    fp = serving_fingerprint(store)
    if fp is None or fp == cfg.training_fingerprint():
        return
    what = _describe(differing_keys(recorded_sections(store), cfg), fp, cfg.training_fingerprint())
    raise RefusedError(
        f"this store's checkpoints were trained with another training config ({what}); "
        f"continuing would serve a version no single config reproduces. Train with the store's config, {START_OVER}. "
        "Nothing was changed."
    )


def chain_config(store: Store, cfg: SisaConfig, log: Callable[[str], None] | None = None) -> SisaConfig:
    """`cfg` with the store's recorded training settings in place of its own, when they differ
    (a request retrains the store's chain as it was trained); `log` is told which keys changed."""
    fp = serving_fingerprint(store)
    if fp is None or fp == cfg.training_fingerprint():
        return cfg
    recorded = recorded_sections(store)
    if recorded is None:
        raise RefusedError(
            f"this store's checkpoints were trained with another training config (training fingerprint {fp}, "
            f"given {cfg.training_fingerprint()}) and predate recorded configs, so it cannot be recovered: pass the "
            "config they were trained with; if an earlier sisa trained them, retrain every shard with "
            "`sisa train --from-scratch`. Nothing was changed."
        )
    if recorded.get("trainer", 1) != TRAINER_VERSION:
        raise RefusedError(
            f"this store's checkpoints were trained by sisa's training engine v{recorded.get('trainer', 1)} and this "
            f"sisa trains with v{TRAINER_VERSION}: the same records and config give other bytes, so its chains "
            "cannot be continued or replayed here. Retrain every shard with `sisa train --from-scratch` (queued "
            "requests are carried out first), or use the sisa that trained them. Nothing was changed."
        )
    keys = differing_keys(recorded, cfg)
    data = cfg.to_dict()
    data["store"]["seed"] = recorded["store"]["seed"]
    for section in ("sharding", "lora"):
        data[section] = recorded[section]
    data["training"] = with_later_keys(recorded["training"])
    data["model"].update(recorded["model"])
    resolved = build_config(data)
    if resolved.training_fingerprint() != fp:
        raise RefusedError(
            f"the store's recorded training config does not give the serving version's fingerprint ({fp}); "
            "the store is inconsistent: run `sisa verify` and `sisa versions`. Nothing was changed."
        )
    if log is not None:
        log(
            "note: the training settings given differ from those this store was trained with; retraining with the "
            f"store's own so the version stays one config reproduces ({'; '.join(keys)})"
        )
    return resolved


def check_continuation(
    store: Store, cfg: SisaConfig, shard_id: int, parent: dict[str, Any] | None, fresh_chain: bool
) -> None:
    """The shard job's own check before it trains: on top of `parent` (its manifest) only under
    the parent's training fingerprint; from slice 0 into a store that serves a version (unless the
    job starts every chain anew: `train --from-scratch`) only under that version's."""
    given = cfg.training_fingerprint()
    if parent is not None:
        recorded, where = parent["training_fingerprint"], f"its checkpoint {parent['checkpoint_id']}"
        keys = differing_keys(parent.get("training_config"), cfg)
    elif not fresh_chain:
        recorded, where = serving_fingerprint(store), "the serving version's checkpoints"
        keys = differing_keys(recorded_sections(store), cfg) if recorded not in (None, given) else []
    else:
        return
    if recorded is None or recorded == given:
        return
    raise RefusedError(
        f"shard {shard_id} would continue {where} under another training config ({_describe(keys, recorded, given)}); "
        f"a version mixing configs is one no config reproduces. Use the store's config, {START_OVER}."
    )
