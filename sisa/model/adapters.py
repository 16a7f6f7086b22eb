"""LoRA adapters on the frozen base: the only module that imports peft.

An adapter on disk is peft's own `save_pretrained` layout (adapter_model.safetensors +
adapter_config.json, flat in one folder), so any adapter sisa writes, a shard's or a merged one,
loads with plain `PeftModel.from_pretrained(base, folder)` outside this project too.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, TaskType, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from sisa.config import LoraConfig
from sisa.storage.errors import ConfigError, NotFoundError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ALL_LINEAR = "all-linear"


def attach_lora(base: torch.nn.Module, cfg: LoraConfig, adapter_name: str = "default") -> PeftModel:
    """Wrap `base` with a fresh, trainable LoRA adapter.

    peft draws lora_A from the global torch RNG (lora_B starts at zero), walking the modules in
    model order, so the initial adapter depends only on the RNG state at this call: the trainer
    seeds torch from (store seed, shard_id, slice_idx) right before it.
    peft modifies `base` in place, so each adapter setup needs its own freshly loaded base.
    """
    if isinstance(base, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in base.modules()):
        raise ValueError("attach_lora needs a fresh base model; this one already carries LoRA layers")
    name_or_path = str(getattr(base, "name_or_path", "") or "")
    model_type = getattr(getattr(base, "config", None), "model_type", "?")
    try:
        peft_cfg = PeftLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=peft_target_modules(cfg.target_modules),
        )
        model = get_peft_model(base, peft_cfg, adapter_name=adapter_name)
    except ValueError as e:
        # peft: no default for this architecture, or target names the model does not have.
        raise ConfigError(
            [
                f"`lora.target_modules` {list(cfg.target_modules)} does not fit the base model ({model_type}): {e}. "
                "Name its projection modules, or use all-linear"
            ]
        ) from None
    # The folder name, not its path: adapter_config.json must not differ between machines. peft
    # writes the base's full path into the config (and warns if it held another name), so the
    # name is set after it.
    model.peft_config[adapter_name].base_model_name_or_path = Path(name_or_path).name or None
    return model


def peft_target_modules(names: list[str]) -> str | list[str] | None:
    """`lora.target_modules` as peft takes it: `all-linear` (every linear layer but the output
    head), [] (peft's default for the architecture: None), or the module names."""
    names = list(names)
    if ALL_LINEAR in names:
        if len(names) > 1:
            raise ConfigError([f"`lora.target_modules` should be all-linear alone or module names, got {names}"])
        return ALL_LINEAR
    return names or None


def load_adapter_state(model: PeftModel, state: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Put saved tensors back into an attached adapter; refuses a state of another LoRA layout
    (peft itself would skip unknown keys silently and leave the fresh init in place)."""
    expected = get_peft_model_state_dict(model, adapter_name=adapter_name)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong_shape:
        raise ConfigError(
            [
                f"the adapter state does not fit adapter {adapter_name!r} (did lora.r or lora.target_modules change?): "
                f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} of another shape, "
                f"e.g. {(missing + unexpected + wrong_shape)[:3]}"
            ]
        )
    set_peft_model_state_dict(model, state, adapter_name=adapter_name)


def save_adapter(model: PeftModel, out_dir: str | os.PathLike, adapter_name: str = "default") -> Path:
    """Write one adapter as adapter_model.safetensors + adapter_config.json directly in `out_dir`.

    peft puts a non-default adapter in a subfolder named after it; we save to a temporary
    sibling and move the two files up, each by an atomic rename, so `out_dir` is flat and
    `PeftModel.from_pretrained(base, out_dir)` loads it whatever the adapter was called.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        # The adapter alone: the base's embeddings are frozen and fingerprinted apart, and never
        # resized. ("auto" would look the base's folder name up on the Hub to compare vocabularies,
        # and warn on every checkpoint when it cannot.)
        model.save_pretrained(
            str(tmp), selected_adapters=[adapter_name], safe_serialization=True, save_embedding_layers=False
        )
        src = tmp if adapter_name == "default" else tmp / adapter_name
        _stabilize_config(src / ADAPTER_CONFIG)
        for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
            os.replace(src / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _stabilize_config(path: Path) -> None:
    """peft writes set-valued fields (target_modules) as `list(set)`, whose order changes with
    PYTHONHASHSEED; sort them so the same adapter gives the same bytes in every process."""
    data = json.loads(path.read_text())
    for key in ("target_modules", "exclude_modules"):
        if isinstance(data.get(key), list):
            data[key] = sorted(data[key])
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def load_adapters(base: torch.nn.Module, dirs: dict[str, str]) -> PeftModel:
    """One frozen, eval-mode PeftModel holding every named adapter, for serving and evaluation
    (several adapters on one base is what lets the ensemble run as one batched forward)."""
    if not dirs:
        raise ValueError("load_adapters needs at least one adapter folder")
    for name, folder in dirs.items():
        if not (Path(folder) / ADAPTER_CONFIG).is_file():
            raise NotFoundError(f"adapter {name!r}: no {ADAPTER_CONFIG} in {str(folder)!r}")
    (first, first_dir), *rest = dirs.items()
    model = PeftModel.from_pretrained(base, str(first_dir), adapter_name=first)
    return add_adapters(model, dict(rest))


def add_adapters(model: PeftModel, dirs: dict[str, str]) -> PeftModel:
    """Load more named adapters into a PeftModel that `load_adapters` made (frozen, eval mode):
    the adapters already there stay as they are."""
    for name, folder in dirs.items():
        if not (Path(folder) / ADAPTER_CONFIG).is_file():
            raise NotFoundError(f"adapter {name!r}: no {ADAPTER_CONFIG} in {str(folder)!r}")
        if name in model.peft_config:
            # peft would overwrite it in place, under a name some ensemble already points at.
            raise ValueError(f"an adapter named {name!r} already exists")
        model.load_adapter(str(folder), adapter_name=name)
    model.requires_grad_(False)
    model.eval()
    return model


def merge_adapters(
    peft_model: PeftModel,
    names: list[str],
    weights: list[float],
    merged_name: str,
    out_dir: str | os.PathLike,
) -> Path:
    """Combine adapters into one (delta W = sum_i w_i * delta W_i) and save it as a normal PEFT
    folder; serving it costs one adapter instead of S, at the price of averaging in weight space
    rather than in probability space like the ensemble."""
    if not names or len(names) != len(weights):
        raise ValueError(
            f"merge_adapters needs one weight per adapter, got {len(names)} names and {len(weights)} weights"
        )
    if merged_name in peft_model.peft_config:
        # peft would silently return and keep the old adapter under this name.
        raise ValueError(f"an adapter named {merged_name!r} already exists")
    # "cat" stacks the scaled A's and the B's, so B_cat @ A_cat is exactly sum_i w_i s_i B_i A_i,
    # at rank sum(r_i). "linear" averages A's and B's separately, whose product has cross terms
    # (B_1 A_2 ...) and is only a rough approximation; "svd" is exact only up to a truncation.
    peft_model.add_weighted_adapter(
        adapters=list(names),
        weights=list(weights),
        adapter_name=merged_name,
        combination_type="cat",
    )
    return save_adapter(peft_model, out_dir, merged_name)


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer owns (the LoRA tensors), in module order."""
    return [p for p in model.parameters() if p.requires_grad]
