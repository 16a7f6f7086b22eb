"""Loading a model version for use: the base plus every shard's verified adapter, and scoring.

`load_ensemble` verifies each checkpoint's sha256 before peft reads it and takes the serving
settings from the config (`serving.aggregation`, `serving.prior`, `serving.top_shards`); with
`prior: records` the prior is each shard's live record count in the store's index.
`score_records` gives per-record losses under the served mixture and under each shard; when the
records carry a prompt (`prompt_field`), only the answer tokens count, since a memorized fact
shows in the answer and an unfamiliar name would inflate the loss of the whole sentence for
trained and unseen alike. The prompt still counts as context: it is what picks the shard.
Scoring reads a record whole, up to the model's context (`scoring_length`), never cut to
`training.max_length`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any

import pyarrow.compute as pc
import torch

from sisa.config import ModelConfig, SisaConfig
from sisa.data.formats import Item
from sisa.lineage import checkpoints, versions
from sisa.lineage.versions import ModelVersion
from sisa.model import adapters, decoding
from sisa.model import mixture as aggregate
from sisa.model.base import load_base_model, model_context, torch_threads
from sisa.model.chat import render_chat_prompt
from sisa.model.loss import encode_texts
from sisa.model.token_cache import TokenLogprobCache
from sisa.storage.errors import StoreError
from sisa.storage.store import Store


def one_thread() -> AbstractContextManager[None]:
    """Scoring and token-by-token decoding of the evidence's small batches run on one torch
    thread: on a shared 2-core machine two threads decoded 8-25x slower (benchmarks/forget.py)
    and scored 7x slower (the demo under load 5: 16 records in 28 s against 4 s), each matmul
    spinning in OpenMP waiting for its second thread. (On the same machine idle, two threads
    scored 1.75x faster and decoded 1.1x: a long evaluation with the machine to itself may ask
    for them, as `sisa eval --tofu --threads` does.)"""
    return torch_threads(1)


@dataclass
class Ensemble:
    model: torch.nn.Module
    tokenizer: object
    names: dict[int, str]  # shard_id → adapter name
    aggregation: str = "posterior"  # posterior | uniform (serving.aggregation)
    record_counts: dict[int, int] | None = None  # shard_id → live records, the prior; None: uniform
    top_shards: int = 0  # generation keeps the m most probable shards after the prompt; 0 = all
    # An EnsemblePool's ensembles share their shards' token log-probs (sisa/model/token_cache.py).
    cache: TokenLogprobCache | None = None

    def adapter_names(self, shards: list[int] | None = None) -> list[str]:
        return [self.names[k] for k in self._keys(shards)]

    def log_prior(self, shards: list[int] | None = None) -> torch.Tensor:
        """log π over the given shards (default all), in adapter_names order."""
        keys = self._keys(shards)
        counts = None if self.record_counts is None else [self.record_counts.get(k, 0) for k in keys]
        return aggregate.log_prior(len(keys), counts)

    def _keys(self, shards: list[int] | None) -> list[int]:
        return sorted(self.names) if shards is None else sorted(shards)


BASE_SHARD = -1  # the key of the base model in an ensemble of no adapters


def live_record_counts(store: Store) -> dict[int, int]:
    """shard_id → records still live in the index (what `serving.prior: records` weighs by)."""
    counts = pc.value_counts(store.index.live()["shard_id"]).to_pylist()
    return {int(c["values"]): int(c["counts"]) for c in counts}


def load_ensemble(store: Store, cfg: SisaConfig, shards: dict[int, str]) -> Ensemble:
    base, tokenizer = load_base_model(cfg.model)
    if not shards:  # a version that serves the base alone (see aggregate.BASE)
        base.requires_grad_(False)
        base.eval()
        return Ensemble(base, tokenizer, {BASE_SHARD: aggregate.BASE}, cfg.serving.aggregation, None, 0)
    # The adapters are read into memory; downloads of a remote store's checkpoints go at the end.
    with ExitStack() as opened:
        dirs = {}
        for shard_id, ckpt_id in sorted(shards.items()):
            ckpt = opened.enter_context(
                checkpoints.open_checkpoint(store, ckpt_id)
            )  # raises IntegrityError on a bad file
            dirs[f"shard{shard_id}"] = ckpt.path
        model = adapters.load_adapters(base, dirs)
    counts = live_record_counts(store) if cfg.serving.prior == "records" else None
    return Ensemble(
        model,
        tokenizer,
        {s: f"shard{s}" for s in sorted(shards)},
        cfg.serving.aggregation,
        counts,
        cfg.serving.top_shards,
    )


class EnsemblePool:
    """The ensembles of several versions on one base model: each checkpoint's adapter is read (its
    sha256 verified) once, under a name of its own, and a version's ensemble names its shards'.

    A request's evidence measures the version before, the relief or fast path and the exact
    version, which share every checkpoint but the affected shards': loading the base and all
    adapters anew for each of its ~11 measures was most of the evidence's fixed cost on SmolLM2.
    Its ensembles share one `TokenLogprobCache` (`scores`): a shard the versions share is scored
    once per text, whichever version asks.
    The ensembles it hands out share one model, so a pool serves one thread (the run that made
    it: a request's phases, the demo), and lives no longer than that run; a purged checkpoint's
    tensors leave memory with it. `base_loads` and `adapter_loads` count what it read."""

    def __init__(self, share_scores: bool = True) -> None:
        self._model: torch.nn.Module | None = None
        self._tokenizer: object = None
        self._model_cfg: ModelConfig | None = None
        self._names: dict[str, str] = {}  # checkpoint_id → adapter name
        # What the ensembles scored, by adapter name and text (None: every measure scores anew, as
        # benchmarks/evidence_speed.py's baseline does).
        self.scores = TokenLogprobCache() if share_scores else None
        self.base_loads = 0
        self.adapter_loads = 0

    def ensemble(self, store: Store, cfg: SisaConfig, shards: dict[int, str]) -> Ensemble:
        """What `load_ensemble(store, cfg, shards)` gives, from the adapters loaded so far and the
        ones this version adds. A version of no shard serves the plain base: loaded apart, since
        the pool's base carries LoRA layers."""
        if not shards:
            return load_ensemble(store, cfg, shards)
        if self._model is not None and cfg.model != self._model_cfg:
            raise ValueError("an EnsemblePool holds one base model; this config names another")
        new = sorted({c for c in shards.values() if c not in self._names})
        with ExitStack() as opened:
            dirs = {}
            for ckpt_id in new:
                ckpt = opened.enter_context(checkpoints.open_checkpoint(store, ckpt_id))  # IntegrityError if bad
                dirs[f"ckpt{self.adapter_loads + len(dirs)}"] = ckpt.path  # never a dropped one's name
            if self._model is None:
                base, self._tokenizer = load_base_model(cfg.model)
                self._model, self._model_cfg = adapters.load_adapters(base, dirs), cfg.model
                self.base_loads += 1
            elif dirs:
                adapters.add_adapters(self._model, dirs)
        self._names.update(zip(new, dirs, strict=True))
        self.adapter_loads += len(new)
        counts = live_record_counts(store) if cfg.serving.prior == "records" else None
        return Ensemble(
            self._model,
            self._tokenizer,
            {s: self._names[c] for s, c in sorted(shards.items())},
            cfg.serving.aggregation,
            counts,
            cfg.serving.top_shards,
            self.scores,
        )

    def checkpoint_ids(self) -> set[str]:
        """The checkpoints whose adapters the pool holds."""
        return set(self._names)

    def drop(self, checkpoint_ids: Iterable[str]) -> None:
        """Remove these checkpoints' adapters from memory (a purge deleted their files): the pool
        never again holds the weights of a checkpoint trained on deleted records. With none left,
        the base goes too. The scores go whole: they are keyed by the run's texts, the deleted
        records' among them."""
        if self.scores is not None:
            self.scores.clear()
        with warnings.catch_warnings():  # peft says which adapter it made active instead: any, here
            warnings.filterwarnings("ignore", message=".*was active which is now deleted", category=UserWarning)
            for ckpt_id in sorted(set(checkpoint_ids) & set(self._names)):
                self._model.delete_adapter(self._names.pop(ckpt_id))
        if not self._names:
            self._model = self._tokenizer = self._model_cfg = None


def ensemble_of(store: Store, cfg: SisaConfig, shards: dict[int, str], pool: EnsemblePool | None) -> Ensemble:
    """The version's ensemble from `pool` when the caller keeps one, else freshly loaded."""
    return load_ensemble(store, cfg, shards) if pool is None else pool.ensemble(store, cfg, shards)


def scoring_length(ens: Ensemble) -> int:
    """How many tokens of a record scoring and the evidence read: all of them, up to the model's
    context (max_position_embeddings), never `training.max_length`: a completion is never cut to the
    training window. A model that names no context: no limit."""
    base = ens.model.get_base_model() if hasattr(ens.model, "get_base_model") else ens.model
    return model_context(base) or NO_LIMIT


NO_LIMIT = 1 << 30


def encode_for_scoring(
    tokenizer, texts: list[Item], prompts: list[str | None] | None, max_length: int
) -> dict[str, torch.Tensor]:
    """Prompt-completion and chat records are always scored on their completion / assistant
    tokens (what the model would say); a text record on every token, or after its `prompt`."""
    batch = encode_texts(tokenizer, texts, max_length, "completion")
    if prompts is None:
        return batch
    labels = batch["labels"].clone()
    for i, prompt in enumerate(prompts):
        if prompt and isinstance(texts[i], str) and texts[i].startswith(prompt):
            n = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
            labels[i, :n] = -100
    batch["labels"] = labels
    return batch


@torch.no_grad()
def score_aggregations(
    ens: Ensemble,
    texts: list[Item],
    prompts: list[str | None] | None = None,
    max_length: int | None = None,
    batch_size: int = 16,
    shards: list[int] | None = None,
) -> tuple[dict[str, list[float]], dict[int, list[float]]]:
    """({aggregation: loss per record} for posterior and uniform, {shard_id: loss per record}),
    over the given shards (default all), from one batched forward per chunk. Records are read
    whole up to `max_length` tokens, by default the model's context (`scoring_length`)."""
    max_length = scoring_length(ens) if max_length is None else max_length
    keys = sorted(ens.names) if shards is None else sorted(shards)
    names = ens.adapter_names(keys)
    prior = ens.log_prior(keys)
    mixed: dict[str, list[float]] = {a: [] for a in aggregate.AGGREGATIONS}
    per: dict[int, list[float]] = {k: [] for k in keys}
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        pchunk = prompts[start : start + batch_size] if prompts is not None else None
        batch = encode_for_scoring(ens.tokenizer, chunk, pchunk, max_length)
        m, each = aggregate.aggregated_sequence_losses(ens.model, names, batch, prior, ens.cache)
        for a in mixed:
            mixed[a].extend(m[a].tolist())
        for k, name in zip(keys, names, strict=True):
            per[k].extend(each[name].tolist())
    return mixed, per


def score_records(
    ens: Ensemble,
    texts: list[Item],
    prompts: list[str | None] | None = None,
    max_length: int | None = None,
    batch_size: int = 16,
    shards: list[int] | None = None,
    aggregation: str | None = None,
) -> tuple[list[float], dict[int, list[float]]]:
    """(served loss per record, {shard_id: loss per record}) over the given shards (default all),
    under `aggregation` (default the ensemble's, i.e. the config's `serving.aggregation`)."""
    aggregation = ens.aggregation if aggregation is None else aggregation
    aggregate.check_aggregation(aggregation)
    mixed, per = score_aggregations(ens, texts, prompts, max_length, batch_size, shards)
    return mixed[aggregation], per


def generate_text(
    ens: Ensemble,
    prompt: str,
    max_new_tokens: int = 32,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    shards: list[int] | None = None,
    add_special_tokens: bool = True,
    ignore_eos: bool = False,
) -> str:
    """A completion of `prompt` from the served mixture, with the ensemble's serving settings
    (`ignore_eos`: exactly `max_new_tokens`, for benchmarks that time a fixed amount of work)."""
    return aggregate.generate(
        ens.model,
        ens.tokenizer,
        ens.adapter_names(shards),
        prompt,
        max_new_tokens,
        greedy,
        temperature,
        seed,
        aggregation=ens.aggregation,
        log_prior=ens.log_prior(shards),
        top_shards=ens.top_shards,
        ignore_eos=ignore_eos,
        add_special_tokens=add_special_tokens,
    )


def sample_texts(
    ens: Ensemble,
    prompt: str,
    seeds: list[int],
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    add_special_tokens: bool = True,
) -> list[str]:
    """One sampled completion of `prompt` per seed, decoded together (aggregate.sample); each is
    the text `generate_text(..., greedy=False, seed=s)` draws, up to float rounding of the batch."""
    return aggregate.sample(
        ens.model,
        ens.tokenizer,
        ens.adapter_names(),
        prompt,
        seeds,
        max_new_tokens,
        False,
        temperature,
        aggregation=ens.aggregation,
        log_prior=ens.log_prior(),
        top_shards=ens.top_shards,
        add_special_tokens=add_special_tokens,
    )


def generate_many(
    ens: Ensemble, prompts: list[str], max_new_tokens: list[int], add_special_tokens: bool = True
) -> list[str]:
    """Greedy completions of many prompts, decoded together in one running batch (each with its
    own length): the texts `generate_text` gives each prompt alone, up to float rounding."""
    tok = ens.tokenizer
    reqs = [
        decoding.DecodeRequest(tok(p, add_special_tokens=add_special_tokens)["input_ids"], n, top_shards=ens.top_shards)
        for p, n in zip(prompts, max_new_tokens, strict=True)
    ]
    out = decoding.decode_all(ens.model, tok, ens.adapter_names(), reqs, ens.aggregation, ens.log_prior())
    return [d.completions[0].text for d in out]


def sample_many(
    ens: Ensemble,
    prompts: list[str],
    seeds: list[int],
    max_new_tokens: list[int],
    temperature: float = 1.0,
    add_special_tokens: bool = True,
) -> list[list[str]]:
    """Per prompt, one sampled completion per seed (each its own length), every prompt's samples
    decoded together in one running batch: per prompt the texts `sample_texts` draws, up to float
    rounding of the batch."""
    tok = ens.tokenizer
    reqs = [
        decoding.DecodeRequest(
            tok(p, add_special_tokens=add_special_tokens)["input_ids"],
            n,
            greedy=False,
            temperature=temperature,
            seeds=list(seeds),
            top_shards=ens.top_shards,
        )
        for p, n in zip(prompts, max_new_tokens, strict=True)
    ]
    out = decoding.decode_all(ens.model, tok, ens.adapter_names(), reqs, ens.aggregation, ens.log_prior())
    return [[c.text for c in d.completions] for d in out]


def recalls(ens: Ensemble, prompts: list[str], answers: list[str], add_special_tokens: bool = True) -> list[bool]:
    """Per fact: whether the served mixture's greedy completion of the prompt starts with the
    answer (decoding only as far as that needs; every fact decoded together)."""
    needed = [len(ens.tokenizer(a, add_special_tokens=False)["input_ids"]) + 2 for a in answers]
    texts = generate_many(ens, prompts, needed, add_special_tokens)
    return [text.strip().startswith(a.strip()) for text, a in zip(texts, answers, strict=True)]


def chat_prompt(ens: Ensemble, messages: list[tuple[str, str]]) -> str:
    """The conversation rendered with the base model's chat template, as training renders chat
    records, ending in the template's generation prompt (the assistant's turn to speak)."""
    return render_chat_prompt(ens.tokenizer, messages)


def generate_chat(
    ens: Ensemble,
    messages: list[tuple[str, str]],
    max_new_tokens: int = 32,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
) -> str:
    """The assistant's reply to a conversation, from the served mixture."""
    prompt = chat_prompt(ens, messages)
    return generate_text(ens, prompt, max_new_tokens, greedy, temperature, seed, add_special_tokens=False)


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def measure_records(
    store: Store,
    cfg: SisaConfig,
    shards: dict[int, str],
    texts: list[Item],
    prompts: list[str | None] | None,
    pool: EnsemblePool | None = None,
) -> dict[str, Any]:
    """Mean loss of the records under a version's served mixture (`ensemble`, with the config's
    aggregation), under each aggregation (`by_aggregation`), and under each shard (`per_shard`)."""
    if not texts:  # no shards: the base model alone serves (a relief of every shard)
        return {}
    ens = ensemble_of(store, cfg, shards, pool)
    with one_thread():
        mixed, per = score_aggregations(ens, texts, prompts)
    return {
        "ensemble": mean(mixed[ens.aggregation]),
        "aggregation": ens.aggregation,
        "by_aggregation": {a: mean(v) for a, v in mixed.items()},
        "per_shard": {str(k): mean(v) for k, v in per.items()},
    }


def load_serving(store: Store, cfg: SisaConfig, model_version: int | None = None) -> tuple[ModelVersion, Ensemble]:
    """The serving version (or `model_version`) and its loaded ensemble."""
    v = versions.current(store) if model_version is None else versions.read(store, model_version)
    if v is None:
        raise StoreError("no model version serves yet: run `sisa train` first")
    return v, load_ensemble(store, cfg, versions.shard_checkpoints(v))
