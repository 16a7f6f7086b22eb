"""The loss of the trained tokens only, in chunks: what every sisa training step minimizes.

A causal LM's full logits are batch x length x vocabulary floats: 8 records of 4,096 tokens with
a 128k vocabulary are about 17 GB in fp32. Training needs the log-probability of the trained
tokens only (a chat record's assistant turns, a completion), so the decoder's hidden states are
gathered at those positions and the output head runs on them `chunk` rows at a time, each chunk
recomputed in the backward pass instead of kept. Models whose head does more than one linear map
(logit soft-capping, a logit scale) take the plain path: the model's own logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# config attributes of architectures whose logits are more than `lm_head(hidden)`
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _plain_head(model) -> bool:
    cfg = getattr(model, "config", None)
    text_cfg = cfg.get_text_config() if cfg is not None and hasattr(cfg, "get_text_config") else cfg
    if any(getattr(text_cfg, name, None) not in (None, 1, 1.0) for name in _HEAD_EXTRAS):
        return False
    return callable(getattr(model, "get_decoder", None)) and model.get_output_embeddings() is not None


def _head_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def trained_token_nll(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, chunk: int
) -> torch.Tensor:
    """The negative log-likelihood of every trained token (label != -100, predicted from the
    position before it), one value each in row-major order; `model` is a causal LM or a peft
    model around one. `chunk`: output-head rows computed at once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    targets = labels[:, 1:]
    keep = targets != -100
    if not _plain_head(base):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="none")
    hidden = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    h = hidden.last_hidden_state[:, :-1][keep]
    t = targets[keep]
    head = base.get_output_embeddings()
    if h.shape[0] <= chunk:
        return _head_nll(head, h, t)
    parts = []
    for start in range(0, h.shape[0], chunk):
        hs, ts = h[start : start + chunk], t[start : start + chunk]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_head_nll, head, hs, ts, use_reentrant=False))
        else:
            parts.append(_head_nll(head, hs, ts))
    return torch.cat(parts)


def record_nll(model, batch: dict[str, torch.Tensor], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL of each record's trained tokens, how many it has): the per-record view of
    `trained_token_nll` that the fast path's and the edit bridge's losses weigh."""
    device = next(model.parameters()).device
    labels = batch["labels"].to(device)
    nll = trained_token_nll(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), labels, chunk)
    counts = (labels[:, 1:] != -100).sum(1)
    sums = torch.stack([part.sum() for part in torch.split(nll, counts.tolist())])
    return sums, counts.clamp(min=1)
