"""LoRA adapters: seeded init, peft-loadable folders, multi-adapter loading, exact merging."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from sisa.storage.errors import ConfigError, NotFoundError

from sisa.config import LoraConfig, ModelConfig
from sisa.model.adapters import (
    attach_lora,
    load_adapter_state,
    load_adapters,
    merge_adapters,
    save_adapter,
    trainable_parameters,
)
from sisa.model.base import load_base_model
from tests.helpers import REPO

TINY = ModelConfig(name="tiny", device="cpu")
LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "o_proj"])


def adapter_state(model: PeftModel, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """A CPU copy of the adapter's tensors, keyed as in adapter_model.safetensors (what
    save_adapter writes and load_adapter_state takes)."""
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def fresh_base():
    return load_base_model(TINY)[0]


def trained_like(seed: int, name: str = "default"):
    """An adapter whose B is non-zero, as after training, so that adapters differ in output."""
    torch.manual_seed(seed)
    model = attach_lora(fresh_base(), LORA, adapter_name=name)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.5)
    return model


def test_attach_lora_init_depends_only_on_the_seed():
    torch.manual_seed(3)
    a = adapter_state(attach_lora(fresh_base(), LORA))
    torch.manual_seed(3)
    b = adapter_state(attach_lora(fresh_base(), LORA))
    torch.manual_seed(4)
    c = adapter_state(attach_lora(fresh_base(), LORA))
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if "lora_A" in k)
    assert len(a) == 2 * 2 * len(LORA.target_modules)  # A and B, 2 layers


def test_only_lora_is_trainable_and_a_base_is_wrapped_once():
    base = fresh_base()
    model = attach_lora(base, LORA)
    params = trainable_parameters(model)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(params) == len(names) == 12 and all("lora_" in n for n in names)
    with pytest.raises(ValueError, match="fresh base"):
        attach_lora(base, LORA)


def test_saved_adapter_loads_with_plain_peft(tmp_path):
    model = trained_like(0, name="shard-3")
    out = save_adapter(model, tmp_path / "ckpt", adapter_name="shard-3")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp folder left behind
    loaded = PeftModel.from_pretrained(fresh_base(), str(out))
    want, got = adapter_state(model, "shard-3"), adapter_state(loaded)
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)


def test_adapter_config_names_the_base_folder_not_this_machines_path_and_peft_stays_quiet(tmp_path):
    """adapter_config.json must not differ between machines: the base's folder name, not its
    path (peft 0.21 writes the path, and warned on every shard job that it renamed it). Saving
    warns of nothing either (peft looked the folder name up on the Hub and warned it could not)."""
    base = fresh_base()
    base.name_or_path = str(tmp_path / "models" / "smollm2-135m-instruct")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = attach_lora(base, LORA)
        out = save_adapter(model, tmp_path / "ckpt")
    # (libraries' deprecation notes to their own callers aside, as the shard jobs leave them)
    assert [str(w.message) for w in caught if not issubclass(w.category, (DeprecationWarning, FutureWarning))] == []
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m-instruct"


def test_adapter_state_round_trip_and_layout_check():
    source = trained_like(1)
    state = adapter_state(source)
    torch.manual_seed(9)
    target = attach_lora(fresh_base(), LORA)
    load_adapter_state(target, state)
    got = adapter_state(target)
    assert all(torch.equal(state[k], got[k]) for k in state)
    torch.manual_seed(9)
    other = attach_lora(fresh_base(), LoraConfig(r=2, alpha=4, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="lora.r"):
        load_adapter_state(other, state)


def test_load_adapters_holds_every_adapter_frozen(tmp_path):
    dirs = {f"shard{i}": str(save_adapter(trained_like(i), tmp_path / f"s{i}")) for i in range(3)}
    model = load_adapters(fresh_base(), dirs)
    assert set(model.peft_config) == set(dirs)
    assert not model.training and not trainable_parameters(model)
    for i, name in enumerate(dirs):
        want, got = adapter_state(trained_like(i)), adapter_state(model, name)
        assert all(torch.equal(want[k], got[k]) for k in want)
    with pytest.raises(NotFoundError, match="shard9"):
        load_adapters(fresh_base(), {"shard9": str(tmp_path / "missing")})


def _deltas(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """delta W = scaling * B @ A for every LoRA layer, keyed by the layer's name."""
    out = {}
    for key, a in state.items():
        if ".lora_A." in key:
            b = state[key.replace(".lora_A.", ".lora_B.")]
            out[key.split(".lora_A.")[0]] = scaling * (b @ a)
    return out


def test_merged_adapter_is_the_weighted_sum_and_loads_with_peft(tmp_path):
    dirs = {f"shard{i}": str(save_adapter(trained_like(i), tmp_path / f"s{i}")) for i in range(3)}
    model = load_adapters(fresh_base(), dirs)
    weights = [0.5, 0.3, 0.2]
    out = merge_adapters(model, list(dirs), weights, "merged", tmp_path / "merged")
    merged = PeftModel.from_pretrained(fresh_base(), str(out))
    cfg = merged.peft_config["default"]
    assert cfg.r == 3 * LORA.r  # "cat" stacks the ranks
    got = _deltas(adapter_state(merged), cfg.lora_alpha / cfg.r)
    parts = [_deltas(adapter_state(model, n), LORA.alpha / LORA.r) for n in dirs]
    for layer, delta in got.items():
        expected = sum(w * p[layer] for w, p in zip(weights, parts, strict=True))
        assert torch.allclose(delta, expected, atol=1e-6)
    with pytest.raises(ValueError, match="already exists"):
        merge_adapters(model, list(dirs), weights, "merged", tmp_path / "again")


_CHILD = """
import hashlib, sys, torch
from sisa.model.adapters import attach_lora, save_adapter
from sisa.config import LoraConfig, ModelConfig
from sisa.model.base import base_model_fingerprint, load_base_model

def main(out_dir):
    cfg = ModelConfig(name="tiny", device="cpu")
    torch.manual_seed(5)
    lora = LoraConfig(target_modules=["v_proj", "q_proj", "o_proj", "k_proj"])
    out = save_adapter(attach_lora(load_base_model(cfg)[0], lora, "s"), out_dir, "s")
    files = [(out / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")]
    return [base_model_fingerprint(cfg)] + [hashlib.sha256(b).hexdigest() for b in files]

if __name__ == "__main__":
    print(*main(sys.argv[1]))
"""


def test_another_process_builds_the_same_base_and_adapter_bytes(tmp_path):
    """Exactness across processes: a Ray worker must write the bytes the driver would. peft
    writes target_modules in set order, which changes with PYTHONHASHSEED, so the child runs
    with another hash seed than ours (almost surely)."""
    scope: dict = {}
    exec(compile(_CHILD, "child", "exec"), scope)
    here = scope["main"](tmp_path / "here")
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "child")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split()[-3:] == here
    config = json.loads((tmp_path / "here" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
