"""Serving over the shard adapters: the SISA aggregation step.

The served next-token distribution is a mixture of the shards' distributions,

    p(x_t | x_<t) = sum_k w_k(x_<t) p_k(x_t | x_<t).

`posterior` (the default) weighs each shard by how well it explains the context so far,
w_k(x_<t) ∝ π_k p_k(x_<t): the Bayesian posterior over "which shard's data is this text like",
updated token by token. One subject's records share a shard, so the shard that saw a person
explains a prompt about them best and takes over, where the `uniform` mean (w_k = 1/S, what
version 1 served) dilutes what only that shard knows by 1/S. The weights depend only on the
shards' adapters and the query, so a shard retrained without a record brings nothing of it back.

The math is a handful of pure functions over log-probabilities (`log_prior`, `context_loglik`,
`mixture_weights`, `mix_logprobs`, `mixture_token_logprobs`), all in log space with logsumexp,
so a context hundreds of tokens long does not underflow. The first token of a sequence has no
context: there the weights are the prior. Padded positions add nothing to a shard's evidence.

All shards run in one batched forward: the batch is repeated once per adapter and peft's per-row
`adapter_names` routes each copy through its own LoRA weights, so S shards cost one pass of the
shared base instead of S; the prompt's weights come from the same forward as its logits.

The PeftModel must be in eval mode (as `adapters.load_adapters` returns it): peft refuses
per-row `adapter_names` during training.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch

from sisa.model.base import TextTokenizer
from sisa.model.loss import token_logprobs
from sisa.storage.errors import ValidationError

if TYPE_CHECKING:
    from sisa.model.token_cache import TokenLogprobCache

Aggregation = Literal["posterior", "uniform"]
AGGREGATIONS: tuple[str, ...] = ("posterior", "uniform")


# -- the math: pure functions on tensors, shard dimension first --------------------------------
def log_prior(k: int, counts: Sequence[int] | None = None) -> torch.Tensor:
    """log π over k shards, shape [k]: uniform, or proportional to `counts` (live records per
    shard). A shard with no records gets weight 0; all-zero counts fall back to uniform."""
    if k < 1:
        raise ValidationError("the ensemble needs at least one adapter name")
    if counts is not None and len(counts) != k:
        raise ValidationError(f"the prior needs one record count per shard: {k} shards, got {len(counts)} counts")
    if counts is not None and any(c < 0 for c in counts):
        raise ValidationError(f"record counts should be >= 0, got {list(counts)}")
    if counts is None or sum(counts) == 0:
        return torch.full((k,), -math.log(k))
    c = torch.tensor(list(counts), dtype=torch.float64)
    return (c.log() - math.log(float(c.sum()))).float()


def context_loglik(token_logp: torch.Tensor) -> torch.Tensor:
    """[..., T-1] log p_k(x_{t+1} | x_<=t) → [..., T]: at position t (which predicts x_{t+1}),
    log p_k(x_1..x_t | x_0), the evidence of the context before it; 0 at t = 0 (no context)."""
    zero = token_logp.new_zeros(*token_logp.shape[:-1], 1)
    return torch.cat([zero, token_logp.cumsum(-1)], dim=-1)


def mixture_weights(cum_logp: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """log w_k = log π_k + cum_k - logsumexp_j(log π_j + cum_j): the posterior over shards (dim 0).

    cum_logp [k, ...] is each shard's log-likelihood of the context, log_prior [k]."""
    prior = log_prior.to(cum_logp).view(-1, *([1] * (cum_logp.dim() - 1)))
    return torch.log_softmax(cum_logp + prior, dim=0)


def mix_logprobs(logp: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """log sum_k w_k p_k: logp [k, ..., V] and log_weights [k, ...] → [..., V]."""
    return torch.logsumexp(logp + log_weights.unsqueeze(-1), dim=0)


def uniform_logprobs(logp: torch.Tensor) -> torch.Tensor:
    """log mean_k p_k over dim 0 (version 1's aggregation, kept bit for bit)."""
    return torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])


def mixture_token_logprobs(
    token_logp: torch.Tensor, aggregation: str, log_prior: torch.Tensor | None = None
) -> torch.Tensor:
    """[k, B, T-1] each shard's log-prob of the actual next tokens (0 where a token is padding)
    → [B, T-1] the mixture's log-prob of them. Under `posterior`, the weights at position t
    come from the tokens before the one predicted there."""
    check_aggregation(aggregation)
    if aggregation == "uniform":
        return uniform_logprobs(token_logp)
    prior = log_prior if log_prior is not None else torch.full((token_logp.shape[0],), -math.log(token_logp.shape[0]))
    log_w = mixture_weights(context_loglik(token_logp)[..., :-1], prior)
    return mix_logprobs(token_logp.unsqueeze(-1), log_w).squeeze(-1)


def top_shard_indices(log_posterior: torch.Tensor, m: int) -> torch.Tensor | None:
    """The m shards of highest posterior weight, in shard order; None when m keeps them all (0 or
    >= k). Ties go to the lower index, so the choice is deterministic."""
    k = log_posterior.shape[0]
    if m <= 0 or m >= k:
        return None
    order = torch.sort(log_posterior, descending=True, stable=True).indices
    return order[:m].sort().values


def check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValidationError(f"aggregation should be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


# -- the batched forward --------------------------------------------------------------------------
# A version may serve no adapter at all (a relief version whose every shard held the records
# from slice 0): its "ensemble" is the frozen base alone, under this one name.
BASE = "__base__"


def _forward(model: torch.nn.Module, names: list[str], **kw):
    """The model's forward with per-row adapters; a plain base model (no peft) takes none."""
    if not hasattr(model, "peft_config"):
        return model(**kw)
    return model(**kw, adapter_names=names)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batched_logits(
    peft_model: torch.nn.Module,
    adapter_names: list[str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits of every adapter on every row, shape [adapters, batch, seq, vocab]."""
    if not adapter_names:
        raise ValidationError("the ensemble needs at least one adapter name")
    k, b = len(adapter_names), input_ids.shape[0]
    device = _model_device(peft_model)
    rows = [name for name in adapter_names for _ in range(b)]  # adapter-major, matches repeat()
    logits = _forward(
        peft_model,
        rows,
        input_ids=input_ids.to(device).repeat(k, 1),
        attention_mask=attention_mask.to(device).repeat(k, 1),
    ).logits
    return logits.view(k, b, *logits.shape[1:])


def _context_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Every real next token is evidence, prompt included; a pad token, or a token predicted
    from a pad (left padding), is not."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(attention_mask[:, :-1] == 0, -100)
    return labels


def _token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[k, B, T, V] logits → [k, B, T-1] log-prob of each label (0 where the label is -100)."""
    k, b = logits.shape[:2]
    logp, _ = token_logprobs(logits.flatten(0, 1), labels.to(logits.device).repeat(k, 1))
    return logp.view(k, b, -1)


def _prior(log_prior_: torch.Tensor | None, k: int) -> torch.Tensor:
    if log_prior_ is None:
        return log_prior(k)
    if log_prior_.shape != (k,):
        raise ValidationError(
            f"the prior needs one weight per adapter: {k} adapters, got shape {tuple(log_prior_.shape)}"
        )
    return log_prior_


@torch.no_grad()
def ensemble_logprobs(
    peft_model: torch.nn.Module,
    adapter_names: list[str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    aggregation: str = "posterior",
    log_prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """The served log-distribution of the next token at every position, [batch, seq, vocab], float32.

    `uniform`: log mean_k p_k; `posterior`: the mixture weighed by each shard's likelihood of the
    row's tokens up to that position (and `log_prior`, default uniform)."""
    check_aggregation(aggregation)
    logits = _batched_logits(peft_model, adapter_names, input_ids, attention_mask)
    logp = torch.log_softmax(logits.float(), dim=-1)
    if aggregation == "uniform":
        return uniform_logprobs(logp)
    labels = _context_labels(input_ids, attention_mask).to(logp.device)
    tok = logp[:, :, :-1].gather(-1, labels[:, 1:].clamp(min=0).expand(logp.shape[0], -1, -1).unsqueeze(-1)).squeeze(-1)
    tok = tok.masked_fill(labels[:, 1:] == -100, 0.0)
    log_w = mixture_weights(context_loglik(tok), _prior(log_prior, len(adapter_names)).to(logp.device))
    return mix_logprobs(logp, log_w)


@torch.no_grad()
def shard_token_logprobs(
    peft_model: torch.nn.Module,
    adapter_names: list[str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: TokenLogprobCache | None = None,
) -> torch.Tensor:
    """[k, B, T-1]: each adapter's log-prob of every real next token (0 where it is a pad or
    predicted from one), from one batched forward, or from `cache` (sisa/model/token_cache.py)
    for the (adapter, text) rows it has seen."""
    if cache is not None:
        return cache.shard_token_logprobs(peft_model, adapter_names, input_ids, attention_mask)
    logits = _batched_logits(peft_model, adapter_names, input_ids, attention_mask)
    return _token_logprobs(logits, _context_labels(input_ids, attention_mask))


@torch.no_grad()
def served_token_logprobs(
    peft_model: torch.nn.Module,
    adapter_names: list[str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    aggregation: str = "posterior",
    log_prior: torch.Tensor | None = None,
    cache: TokenLogprobCache | None = None,
) -> torch.Tensor:
    """[B, T-1]: the served mixture's log-prob of each actual next token, what
    `ensemble_logprobs` gives gathered at the next token, without the vocabulary-wide mixture."""
    check_aggregation(aggregation)
    tok = shard_token_logprobs(peft_model, adapter_names, input_ids, attention_mask, cache)
    return mixture_token_logprobs(tok, aggregation, _prior(log_prior, len(adapter_names)).to(tok.device))


@torch.no_grad()
def aggregated_sequence_losses(
    peft_model: torch.nn.Module,
    adapter_names: list[str],
    batch: dict[str, torch.Tensor],
    log_prior: torch.Tensor | None = None,
    cache: TokenLogprobCache | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-row mean NLL of the labelled tokens under every aggregation, and under each adapter
    alone, from one batched forward (or `cache`): ({aggregation: [batch]}, {adapter_name: [batch]}).

    Labels of -100 are not scored but still count as context for the posterior: with an
    answer-only mask the prompt is what picks the shard. Only the actual tokens' log-probs are
    kept per adapter, so memory beyond the logits stays small.
    """
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    scored = labels != -100
    assert torch.equal(labels[scored], input_ids[scored]), "labels should be the input ids or -100"
    tok = shard_token_logprobs(peft_model, adapter_names, input_ids, attention_mask, cache)
    mask = (labels[:, 1:] != -100).to(tok.device)
    count = mask.sum(1).clamp(min=1)
    prior = _prior(log_prior, len(adapter_names)).to(tok.device)
    mixed = {a: -(mixture_token_logprobs(tok, a, prior) * mask).sum(1) / count for a in AGGREGATIONS}
    per = {name: -(tok[i] * mask).sum(1) / count for i, name in enumerate(adapter_names)}
    return mixed, per


@torch.no_grad()
def ensemble_sequence_losses(
    peft_model: torch.nn.Module,
    adapter_names: list[str],
    batch: dict[str, torch.Tensor],
    aggregation: str = "posterior",
    log_prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-row mean token NLL under the served mixture, and under each adapter alone (for `sisa eval`).

    Returns (ensemble [batch], {adapter_name: [batch]}); labels of -100 are not scored."""
    check_aggregation(aggregation)
    mixed, per = aggregated_sequence_losses(peft_model, adapter_names, batch, log_prior)
    return mixed[aggregation], per


@torch.no_grad()
def generate(
    peft_model: torch.nn.Module,
    tokenizer: TextTokenizer,
    adapter_names: list[str],
    prompt: str,
    max_new_tokens: int = 32,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    aggregation: str = "posterior",
    log_prior: torch.Tensor | None = None,
    top_shards: int = 0,
    ignore_eos: bool = False,
    add_special_tokens: bool = True,
) -> str:
    """Decode from the mixture, one token at a time, with a KV cache.

    transformers' `generate` samples from one model's logits; the mixture needs every adapter's
    distribution at every step, so the loop is ours. The prompt's forward gives both the first
    distribution and each shard's evidence; every chosen token adds its log-prob under each shard.
    `top_shards` m > 0 keeps, after the prompt, only the m shards of highest posterior weight
    (the others leave the batch and the KV cache, so each step costs m rows), renormalised.
    Sampling draws from a private generator seeded by `seed`, so the same call returns the same text.
    `ignore_eos` decodes exactly `max_new_tokens` (benchmarks time a fixed amount of work).
    """
    return sample(
        peft_model,
        tokenizer,
        adapter_names,
        prompt,
        [seed],
        max_new_tokens,
        greedy,
        temperature,
        aggregation,
        log_prior,
        top_shards,
        ignore_eos,
        add_special_tokens,
    )[0]


@torch.no_grad()
def sample(
    peft_model: torch.nn.Module,
    tokenizer: TextTokenizer,
    adapter_names: list[str],
    prompt: str,
    seeds: list[int],
    max_new_tokens: int = 32,
    greedy: bool = False,
    temperature: float = 1.0,
    aggregation: str = "posterior",
    log_prior: torch.Tensor | None = None,
    top_shards: int = 0,
    ignore_eos: bool = False,
    add_special_tokens: bool = True,
) -> list[str]:
    """One completion of `prompt` per seed, decoded together: the prompt's forward runs once, and
    each step is one forward of (samples x shards) rows, so k samples cost about one decode's
    forwards, not k (leak@k). Each sample keeps its own posterior over the shards and draws from
    its own generator seeded by its seed; a sample that ended keeps its row until all have."""
    check_aggregation(aggregation)
    if not greedy and temperature <= 0:
        raise ValidationError(f"temperature should be > 0 when sampling, got {temperature}")
    if top_shards < 0:
        raise ValidationError(f"top_shards should be >= 0, got {top_shards}")
    if not seeds:
        return []
    # A prompt rendered by a chat template carries its own bos: add_special_tokens=False.
    ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    if not ids:
        raise ValidationError("the prompt encodes to no tokens; give a non-empty prompt")
    names = list(adapter_names)
    k, n = len(names), len(seeds)
    device = _model_device(peft_model)
    prior = _prior(log_prior, k).to(device)
    rngs = [torch.Generator().manual_seed(s) for s in seeds]
    x = torch.tensor([ids] * k, dtype=torch.long, device=device)
    out = _forward(peft_model, names, input_ids=x, use_cache=True)
    past = out.past_key_values
    logp = torch.log_softmax(out.logits.float(), dim=-1)  # [k, prompt, vocab]
    evidence = logp[:, :-1].gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1).sum(-1)  # [k]
    last = logp[:, -1]
    keep = top_shard_indices(prior + evidence, top_shards)
    if keep is not None:
        past.batch_select_indices(keep.to(device))
        names = [names[i] for i in keep.tolist()]
        prior, evidence, last = prior[keep], evidence[keep], last[keep]
        k = len(names)
    if n > 1:  # rows shard-major: row j * n + i is shard j for sample i
        past.batch_repeat_interleave(n)
        names = [name for name in names for _ in range(n)]
    evidence = evidence.unsqueeze(1).expand(k, n).clone()  # [k, n]
    last = last.unsqueeze(1).expand(k, n, last.shape[-1])  # [k, n, vocab]
    new: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    for step in range(max_new_tokens):
        if aggregation == "uniform":
            mixed = uniform_logprobs(last)  # [n, vocab]
        else:
            mixed = mix_logprobs(last, mixture_weights(evidence, prior))
        if greedy:
            tokens = mixed.argmax(-1).tolist()
        else:
            probs = torch.softmax(mixed / temperature, dim=-1).cpu()
            tokens = [int(torch.multinomial(probs[i], 1, generator=rngs[i])) for i in range(n)]
        for i, token in enumerate(tokens):
            if done[i]:
                continue
            if token == tokenizer.eos_token_id and not ignore_eos:
                done[i] = True
            else:
                new[i].append(token)
        if all(done) or step == max_new_tokens - 1:
            break
        chosen = torch.tensor(tokens, dtype=torch.long, device=device)  # [n]
        evidence = evidence + last.gather(-1, chosen.view(1, n, 1).expand(k, n, 1)).squeeze(-1)
        x = chosen.repeat(k).view(k * n, 1)
        out = _forward(peft_model, names, input_ids=x, past_key_values=past, use_cache=True)
        past = out.past_key_values
        last = torch.log_softmax(out.logits[:, -1].float(), dim=-1).view(k, n, -1)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in new]
