"""Records as token batches, and the losses computed on them.

`encode_texts` turns text, prompt-completion and chat records into ids, an attention mask and
labels (only the completion or the assistant's turns carry labels unless `training.loss_on=all`);
`fit_window` keeps the trained tokens when a record is too long; `token_logprobs` and
`sequence_losses` are the per-token and per-record losses that training, scoring and the
evidence share.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sisa.data.formats import PROMPT_COMPLETION, Example, Item
from sisa.model.base import TextTokenizer
from sisa.model.chat import render_chat
from sisa.storage.errors import ConfigError


def encode_texts(
    tokenizer: TextTokenizer,
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
        tokenizer(plain, add_special_tokens=True, padding=False, truncation=False)["input_ids"] if plain else []
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


def _encode_example(tokenizer: TextTokenizer, item: Example, loss_on: str) -> tuple[list[int], list[bool]]:
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
        mask = [end > start and any(a < end and start < b for a, b in spans) for start, end in enc["offset_mapping"]]
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


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token and a mask of the positions that count.

    Position t predicts labels[t + 1]; returns tensors of shape [batch, seq - 1].
    """
    targets = labels[:, 1:]
    mask = targets != -100
    logp = -F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets.masked_fill(~mask, 0), reduction="none")
    return logp * mask, mask


def sequence_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean token cross-entropy per row, shape [batch]; rows are scored independently so a
    record's loss can be tracked (and compared before/after forgetting) on its own."""
    device = next(model.parameters()).device
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
    logp, mask = token_logprobs(logits, batch["labels"].to(device))
    return -logp.sum(1) / mask.sum(1).clamp(min=1)
