"""Any open-weight architecture (issue 15 §4): tiny random models of several families, built from
their transformers configs and saved as local HF folders (nothing downloads), each run through
ingest → train → forget → verify --replay with chat records and `lora.target_modules: all-linear`,
and with peft's default target modules for the architecture (`[]`).

Each model shares the tiny byte-level tokenizer and its chat template, so the families differ
only in their layers: attention and MLP naming (q_proj/k_proj vs GPT-2's fused c_attn Conv1D
vs Phi's dense/fc1/fc2), norms, rotary vs learned positions, tied embeddings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers

from sisa.config import ModelConfig
from sisa.data.synthetic import make_people, write_jsonl
from sisa.data.synthetic_formats import as_format
from sisa.model.base import _build_tiny_tokenizer, load_base_model
from tests.helpers import cli_args, run_cli

VOCAB = len(_build_tiny_tokenizer())
SMALL = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}
FAMILIES: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", {**SMALL, "num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", {**SMALL, "num_key_value_heads": 2}),
    "mistral": ("MistralConfig", {**SMALL, "num_key_value_heads": 2, "sliding_window": None}),
    "gemma": ("GemmaConfig", {**SMALL, "num_key_value_heads": 1, "head_dim": 8}),
    "phi": ("PhiConfig", {**SMALL, "partial_rotary_factor": 0.5}),
    "gpt2": ("GPT2Config", {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 256}),
}


def build_family(kind: str, folder: Path) -> Path:
    """A tiny random `kind` model and the tiny tokenizer, saved as a local HF folder."""
    config_name, kwargs = FAMILIES[kind]
    tokenizer = _build_tiny_tokenizer()
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = getattr(transformers, config_name)(**kwargs, **ids)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {kind: build_family(kind, root / kind) for kind in FAMILIES}


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_every_family_trains_forgets_and_replays_exactly(tmp_path, family_dirs, kind):
    rows = as_format(make_people(6, seed=3), "chat")
    path = tmp_path / "chats.jsonl"
    write_jsonl(rows, path)
    args = cli_args(
        tmp_path / "s",
        f"model.name={family_dirs[kind]}",
        "lora.target_modules=all-linear",
        "sharding.slice_size=4",
        "training.max_length=96",
    )
    for argv in (("ingest", str(path)), ("train",)):
        code, out, err = run_cli(*argv, *args)
        assert code == 0, f"{kind}: sisa {argv[0]}: {err}"
    code, out, err = run_cli("generate", "--chat", "--prompt", "Where?", "--max-new-tokens", "4", *args)
    assert code == 0, err
    code, out, err = run_cli("forget", "--subject", rows[0]["subject_id"], *args)
    assert code == 0, err
    code, out, err = run_cli("verify", "--replay", *args)
    assert code == 0 and "verified" in out and "tensors identical" in out, f"{kind}: {out}{err}"


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("gpt2", {"c_attn"}), ("phi", {"q_proj", "v_proj", "fc1", "fc2"}), ("qwen2", {"q_proj", "v_proj"})],
)
def test_target_modules_peft_default_and_all_linear(family_dirs, kind, expected):
    from sisa.config import LoraConfig
    from sisa.model import adapters

    base, _ = load_base_model(ModelConfig(name=str(family_dirs[kind])))
    model = adapters.attach_lora(base, LoraConfig(target_modules=[]))
    assert set(model.peft_config["default"].target_modules) == expected
    base, _ = load_base_model(ModelConfig(name=str(family_dirs[kind])))
    model = adapters.attach_lora(base, LoraConfig(target_modules=["all-linear"]))
    linear = {name.rsplit(".", 1)[-1] for name in model.peft_config["default"].target_modules}
    assert expected <= linear and "lm_head" not in linear


def test_target_modules_the_model_lacks_are_a_config_error(family_dirs):
    from sisa.storage.errors import ConfigError

    from sisa.config import LoraConfig
    from sisa.model import adapters

    base, _ = load_base_model(ModelConfig(name=str(family_dirs["gpt2"])))
    with pytest.raises(ConfigError, match=r"does not fit the base model \(gpt2\).*all-linear"):
        adapters.attach_lora(base, LoraConfig(target_modules=["q_proj", "v_proj"]))
