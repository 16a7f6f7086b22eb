"""Records as token batches, and the losses computed on them.

Encoding and collation are separate steps: `encode_records` turns each text, prompt-completion or
chat record into an `EncodedRecord` (its ids, which tokens carry a label, its full length and
whether it was cut), once; `collate` right-pads any group of them into a batch. `encode_texts` is
the two together. `token_logprobs` and `sequence_losses` are the per-token and per-record losses
that training, scoring and the evidence share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sisa.data.formats import PROMPT_COMPLETION, Example, Item
from sisa.model.base import TextTokenizer
from sisa.model.chat import render_chat
from sisa.storage.errors import ConfigError


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """One record as the model trains on it: plain lists, cheap to keep for a whole slice.

    `input_ids` and `trained` (which tokens carry a label) hold at most `max_length` tokens;
    `length` is the record's full length before any cut, and `cut` says whether it was cut.
    `weights`: each token's weight in the loss when they differ (a prompt trained at
    `training.prompt_loss_weight`); None: every trained token weighs 1."""

    input_ids: list[int]
    trained: list[bool]
    length: int
    cut: bool
    weights: list[float] | None = None


def encode_records(
    tokenizer: TextTokenizer,
    items: Sequence[Item],
    max_length: int,
    loss_on: str = "completion",
    prompt_weight: float = 0.0,
) -> list[EncodedRecord]:
    """Each record's token ids and trained-token mask, at most `max_length` tokens, cut by
    `fit_window`'s rule.

    A text record (a `str`) ends with eos, so the model learns where a record stops. A
    prompt-completion `Example` is prompt + completion + eos; a chat `Example` is its conversation
    rendered with the tokenizer's chat template (see `render_chat`). With `loss_on="completion"`
    only the completion / assistant tokens carry labels; with `all` every token does. A
    `prompt_weight` above 0 (completion only: `training.prompt_loss_weight`) labels the other
    tokens too, at that weight (`EncodedRecord.weights`); training alone passes it, so scoring and
    the fast path's losses stay on the completion."""
    _check_encoding(max_length, loss_on)
    if not 0.0 <= prompt_weight <= 1.0:
        raise ConfigError([f"`training.prompt_loss_weight` should be between 0 and 1, got {prompt_weight!r}"])
    plain = [t for t in items if isinstance(t, str)]
    encoded = iter(
        tokenizer(plain, add_special_tokens=True, padding=False, truncation=False)["input_ids"] if plain else []
    )
    out: list[EncodedRecord] = []
    for item in items:
        if isinstance(item, str):
            full = list(next(encoded))
            ids, mask = fit_text(full, tokenizer.eos_token_id, max_length)
            out.append(EncodedRecord(ids, mask, len(full) + 1, len(full) + 1 > max_length))
            continue
        full, full_mask = _encode_example(tokenizer, item, loss_on)
        ids, mask = fit_window(full, full_mask, max_length)
        weights = None
        # a record whose completion the window cut away keeps no trained token, its prompt none
        # either: training refuses it by name (sisa/model/lengths.py)
        if loss_on == "completion" and prompt_weight > 0 and any(mask) and not all(mask):
            weights = [1.0 if m else prompt_weight for m in mask]
            mask = [True] * len(mask)
        out.append(EncodedRecord(ids, mask, len(full), len(full) > max_length, weights))
    return out


def collate(records: Sequence[EncodedRecord], pad_id: int) -> dict[str, torch.Tensor]:
    """Token ids, attention mask and labels of `records`, right-padded to their own longest row.

    Labels are -100 on pads and untrained tokens; they come from the masks, not the pad id,
    because many tokenizers (SmolLM2's among them) pad with their eos. When any record weighs its
    tokens (`EncodedRecord.weights`), `loss_weights` holds every token's weight (1 elsewhere)."""
    width = max((len(r.input_ids) for r in records), default=0)
    input_ids = torch.full((len(records), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(records), width), dtype=torch.long)
    label_mask = torch.zeros((len(records), width), dtype=torch.bool)
    weighted = any(r.weights is not None for r in records)
    weights = torch.ones((len(records), width), dtype=torch.float32) if weighted else None
    for i, r in enumerate(records):
        n = len(r.input_ids)
        input_ids[i, :n] = torch.tensor(r.input_ids, dtype=torch.long)
        attention_mask[i, :n] = 1
        label_mask[i, :n] = torch.tensor(r.trained, dtype=torch.bool)
        if weights is not None and r.weights is not None:
            weights[i, :n] = torch.tensor(r.weights, dtype=torch.float32)
    labels = input_ids.masked_fill(~label_mask, -100)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if weights is not None:
        batch["loss_weights"] = weights
    return batch


def encode_texts(
    tokenizer: TextTokenizer,
    texts: Sequence[Item],
    max_length: int,
    loss_on: str = "completion",
) -> dict[str, torch.Tensor]:
    """Token ids, attention mask and labels for causal-LM training and scoring: `encode_records`
    then `collate`, rows right-padded to the longest row of the batch."""
    return collate(encode_records(tokenizer, texts, max_length, loss_on), tokenizer.pad_token_id)


def _check_encoding(max_length: int, loss_on: str) -> None:
    if max_length < 2:
        raise ConfigError([f"`training.max_length` should be >= 2, got {max_length}"])
    if loss_on not in ("completion", "all"):
        raise ConfigError([f"`training.loss_on` should be completion or all, got {loss_on!r}"])


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


def fit_text(ids: list[int], eos_id: int, max_length: int) -> tuple[list[int], list[bool]]:
    """A text record's tokens, then eos, at most `max_length` (see `fit_window` for the rule).

    A record that fits ends with eos; a cut one keeps its first `max_length` tokens and gets no
    eos: eos after a cut would teach the model to stop mid-sentence."""
    ids = (ids + [eos_id])[:max_length]
    return ids, [True] * len(ids)


def fit_window(ids: list[int], mask: list[bool], max_length: int) -> tuple[list[int], list[bool]]:
    """The fair cut: a record longer than `max_length` keeps its first `max_length` tokens.

    Its beginning stays (bos, the system turn, the question: what the answer is conditioned
    on) and its end goes, as TRL cuts (`truncation_mode="keep_start"`). A text record gets no eos
    after the cut (`fit_text`); a prompt-completion record's eos goes with its end; a chat
    record's last turns go, and a turn cut through keeps its start. A record whose prompt alone
    fills the window keeps no trained token: training refuses it by name
    (sisa/model/lengths.py). The rule is part of the training fingerprint of every checkpoint
    that trained a cut record (`CUT_RULE` in sisa/config.py)."""
    return ids[:max_length], mask[:max_length]


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
