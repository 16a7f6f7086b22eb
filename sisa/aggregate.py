"""Serving over the shard adapters: the SISA aggregation step.

The ensemble's next-token distribution is the mean of the shards' distributions. All shards run
in one batched forward: the batch is repeated once per adapter and peft's per-row
`adapter_names` routes each copy through its own LoRA weights, so S shards cost one pass of the
shared base instead of S. Forgetting a shard's records changes only that shard's adapter, so
the ensemble never holds anything the shards do not.

The PeftModel must be in eval mode (as `adapters.load_adapters` returns it): peft refuses
per-row `adapter_names` during training.
"""

from __future__ import annotations

import math

import torch

from sisa.model import TextTokenizer, token_logprobs
from storage.errors import ValidationError


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
    logits = peft_model(
        input_ids=input_ids.to(device).repeat(k, 1),
        attention_mask=attention_mask.to(device).repeat(k, 1),
        adapter_names=rows,
    ).logits
    return logits.view(k, b, *logits.shape[1:])


@torch.no_grad()
def ensemble_logprobs(
    peft_model: torch.nn.Module,
    adapter_names: list[str],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """log(mean_k p_k(next token)), shape [batch, seq, vocab], in float32.

    Computed as logsumexp of the log-softmaxes minus log k, which stays finite where a plain
    mean of probabilities would underflow.
    """
    logits = _batched_logits(peft_model, adapter_names, input_ids, attention_mask)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.logsumexp(logp, dim=0) - math.log(len(adapter_names))


@torch.no_grad()
def ensemble_sequence_losses(
    peft_model: torch.nn.Module,
    adapter_names: list[str],
    batch: dict[str, torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-row mean token NLL under the ensemble, and under each adapter alone (for `sisa eval`).

    Returns (ensemble [batch], {adapter_name: [batch]}); labels of -100 are ignored. Only the
    target tokens' log-probs are kept per adapter, so memory beyond the logits stays small.
    """
    k, b = len(adapter_names), batch["input_ids"].shape[0]
    logits = _batched_logits(peft_model, adapter_names, batch["input_ids"], batch["attention_mask"])
    labels = batch["labels"].to(logits.device)
    logp, mask = token_logprobs(logits.flatten(0, 1), labels.repeat(k, 1))
    logp, mask = logp.view(k, b, -1), mask[:b]
    count = mask.sum(1).clamp(min=1)
    ensemble = (torch.logsumexp(logp, dim=0) - math.log(k)) * mask
    losses = {name: -logp[i].sum(1) / count for i, name in enumerate(adapter_names)}
    return -ensemble.sum(1) / count, losses


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
) -> str:
    """Decode from the ensemble distribution, one token at a time, with a KV cache.

    transformers' `generate` samples from one model's logits; the ensemble needs the mean of
    the adapters' probabilities at every step, so the loop is ours. Sampling draws from a
    private generator seeded by `seed`, so the same call returns the same text.
    """
    if not greedy and temperature <= 0:
        raise ValidationError(f"temperature should be > 0 when sampling, got {temperature}")
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValidationError("the prompt encodes to no tokens; give a non-empty prompt")
    k = len(adapter_names)
    device = _model_device(peft_model)
    rng = torch.Generator().manual_seed(seed)
    x = torch.tensor([ids] * k, dtype=torch.long, device=device)
    past = None
    new: list[int] = []
    for _ in range(max_new_tokens):
        out = peft_model(
            input_ids=x, past_key_values=past, use_cache=True, adapter_names=list(adapter_names)
        )
        past = out.past_key_values
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        mixed = torch.logsumexp(logp, dim=0) - math.log(k)
        if greedy:
            token = int(mixed.argmax())
        else:
            probs = torch.softmax(mixed / temperature, dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=rng))
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
        x = torch.full((k, 1), token, dtype=torch.long, device=device)
    return tokenizer.decode(new, skip_special_tokens=True)
