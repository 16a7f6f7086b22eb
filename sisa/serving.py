"""Loading a model version for use: the base plus every shard's verified adapter, and scoring.

`load_ensemble` verifies each checkpoint's sha256 before peft reads it. `score_records` gives
per-record losses under the ensemble and under each shard; when the records carry a prompt
(`prompt_field`), only the answer tokens count, since a memorized fact shows in the answer and
an unfamiliar name would inflate the loss of the whole sentence for trained and unseen alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sisa import adapters, aggregate, checkpoints, versions
from sisa.config import SisaConfig
from sisa.model import encode_texts, load_base_model
from sisa.versions import ModelVersion
from storage.errors import StoreError
from storage.store import Store


@dataclass
class Ensemble:
    model: torch.nn.Module
    tokenizer: object
    names: dict[int, str]  # shard_id → adapter name

    def adapter_names(self, shards: list[int] | None = None) -> list[str]:
        keys = sorted(self.names) if shards is None else sorted(shards)
        return [self.names[k] for k in keys]


def load_ensemble(store: Store, cfg: SisaConfig, shards: dict[int, str]) -> Ensemble:
    base, tokenizer = load_base_model(cfg.model)
    dirs = {}
    for shard_id, ckpt_id in sorted(shards.items()):
        ckpt = checkpoints.open_checkpoint(store, ckpt_id)  # raises IntegrityError on a bad file
        dirs[f"shard{shard_id}"] = ckpt.path
    model = adapters.load_adapters(base, dirs)
    return Ensemble(model, tokenizer, {s: f"shard{s}" for s in sorted(shards)})


def encode_for_scoring(tokenizer, texts: list[str], prompts: list[str | None] | None, max_length: int) -> dict[str, torch.Tensor]:
    batch = encode_texts(tokenizer, texts, max_length)
    if prompts is None:
        return batch
    labels = batch["labels"].clone()
    for i, prompt in enumerate(prompts):
        if prompt and texts[i].startswith(prompt):
            n = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
            labels[i, :n] = -100
    batch["labels"] = labels
    return batch


@torch.no_grad()
def score_records(
    ens: Ensemble,
    texts: list[str],
    prompts: list[str | None] | None = None,
    max_length: int = 64,
    batch_size: int = 16,
    shards: list[int] | None = None,
) -> tuple[list[float], dict[int, list[float]]]:
    """(ensemble loss per record, {shard_id: loss per record}) over the given shards (default all)."""
    keys = sorted(ens.names) if shards is None else sorted(shards)
    names = [ens.names[k] for k in keys]
    ensemble: list[float] = []
    per: dict[int, list[float]] = {k: [] for k in keys}
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        pchunk = prompts[start : start + batch_size] if prompts is not None else None
        batch = encode_for_scoring(ens.tokenizer, chunk, pchunk, max_length)
        e, each = aggregate.ensemble_sequence_losses(ens.model, names, batch)
        ensemble.extend(e.tolist())
        for k, name in zip(keys, names, strict=True):
            per[k].extend(each[name].tolist())
    return ensemble, per


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def measure_records(store: Store, cfg: SisaConfig, shards: dict[int, str], texts: list[str], prompts: list[str | None] | None) -> dict[str, Any]:
    """Mean loss of the records under a version's ensemble, and under each shard."""
    if not shards or not texts:
        return {}
    ens = load_ensemble(store, cfg, shards)
    ensemble, per = score_records(ens, texts, prompts, cfg.training.max_length)
    return {"ensemble": mean(ensemble), "per_shard": {str(k): mean(v) for k, v in per.items()}}


def load_serving(store: Store, cfg: SisaConfig, model_version: int | None = None) -> tuple[ModelVersion, Ensemble]:
    """The serving version (or `model_version`) and its loaded ensemble."""
    v = versions.current(store) if model_version is None else versions.read(store, model_version)
    if v is None:
        raise StoreError("no model version serves yet: run `sisa train` first")
    return v, load_ensemble(store, cfg, versions.shard_checkpoints(v))
