"""The training engine: a slice's step plan, a pure function of (its records, the config, the
seed), and the steps that carry it out. The shard job trains through it; the fast path (NPO) and
the edit bridge take its optimizer step and token loss.

The plan. The records drawn for the slice (`sample_order`: seeded passes over them) are cut into
optimizer steps of `batch_size * gradient_accumulation_steps` records. With `group_by_length`, a
seeded sampler first sorts each window of 8 steps' draws by pass, then by token length, and
shuffles the steps it cuts from them, so a step's records are distinct, of like length, and pad
little; each step is then split
into micro-batches of `batch_size` records (a step's gradients accumulate over them). The learning
rate of each step comes from transformers' schedulers (warmup, then constant, linear or cosine
decay) over the slice's own steps: the schedule restarts at each slice, so slice j's rates depend
on slice j alone and a retrain from the checkpoint before it continues exactly. Every window and
schedule closes at the slice boundary, where the checkpoint is written.

The loss of a step is the summed negative log-likelihood of all its trained tokens divided by
their count: the same mean whether the step runs as one batch or as many accumulated ones (the
per-micro-batch mean that transformers and TRL fixed in 2024 weighs short micro-batches up).
With `training.prompt_loss_weight`, prompt tokens count at that weight, in the sum and the count.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from sisa.config import TrainingConfig
from sisa.model.base import schedule_multipliers
from sisa.model.loss import EncodedRecord, collate
from sisa.model.token_loss import trained_token_nll
from sisa.storage.errors import ConfigError, ShardJobError

GROUP_WINDOW_STEPS = 8  # steps whose draws one length-sorted window holds


@dataclass(frozen=True)
class StepPlan:
    """What training a slice does, step by step: each optimizer step's micro-batches (indices of
    the slice's records) and its learning rate."""

    steps: tuple[tuple[tuple[int, ...], ...], ...]
    lrs: tuple[float, ...]

    def digest(self) -> str:
        blob = json.dumps([self.steps, [float.hex(lr) for lr in self.lrs]], separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def group_by_length(steps: list[list[int]], lengths: Sequence[int], seed: int) -> list[list[int]]:
    """The same draws, regrouped: each window of GROUP_WINDOW_STEPS steps sorted by pass, then
    longest first (ties by index), cut into steps of the same sizes, and the steps of the window
    shuffled by a generator seeded with `seed`. A pure function of its arguments; no draw crosses
    a window.

    "By pass" is each draw's occurrence within the window (a record's first draw there is pass 0,
    its second pass 1, ...): a small slice trained for many epochs holds several copies of each
    record in one window, and sorting them by length alone would put a record's copies side by
    side, so a step of 8 held 2 records 4 times over and each record was trained in a quarter of
    the steps it would be otherwise (the demo's facts were recalled 3/16 instead of 16/16). By
    pass first, a step holds distinct records whenever the window has that many."""
    out: list[list[int]] = []
    g = torch.Generator().manual_seed(seed)
    for w in range(0, len(steps), GROUP_WINDOW_STEPS):
        window = steps[w : w + GROUP_WINDOW_STEPS]
        seen: dict[int, int] = {}
        keyed = []
        for i in (i for s in window for i in s):
            keyed.append((seen.get(i, 0), -lengths[i], i))
            seen[i] = seen.get(i, 0) + 1
        draws = [i for _, _, i in sorted(keyed)]
        cut, at = [], 0
        for s in window:
            cut.append(draws[at : at + len(s)])
            at += len(s)
        out.extend(cut[k] for k in torch.randperm(len(cut), generator=g).tolist())
    return out


def plan_steps(lengths: Sequence[int], order: Sequence[int], cfg: TrainingConfig, seed: int) -> StepPlan:
    """The step plan of a slice whose records have these token lengths, drawn in `order`."""
    per_step = cfg.batch_size * cfg.gradient_accumulation_steps
    steps = [list(order[i : i + per_step]) for i in range(0, len(order), per_step)]
    if cfg.group_by_length:
        steps = group_by_length(steps, lengths, seed)
    micro = tuple(tuple(tuple(s[i : i + cfg.batch_size]) for i in range(0, len(s), cfg.batch_size)) for s in steps)
    warmup = math.ceil(cfg.warmup_ratio * len(steps))
    lrs = tuple(cfg.lr * m for m in schedule_multipliers(cfg.lr_scheduler, warmup, len(steps)))
    return StepPlan(micro, lrs)


@dataclass
class StepLog:
    """What the steps did: per-step mean loss of the trained tokens and learning rate, and the
    tokens they read (pads excluded) and trained."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    tokens: int = 0
    trained_tokens: int = 0

    @property
    def mean_loss(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None


def trained_count(record: EncodedRecord) -> int:
    """Tokens of a record that carry a label (the first token is never predicted)."""
    return sum(record.trained[1:])


def trained_weight(record: EncodedRecord) -> float:
    """The summed loss weight of a record's labelled tokens: `trained_count` when every token
    weighs 1; a prompt trained at `training.prompt_loss_weight` counts at that weight."""
    if record.weights is None:
        return float(trained_count(record))
    return sum(w for w, t in zip(record.weights[1:], record.trained[1:], strict=True) if t)


def autocast_for(device: torch.device, dtype: torch.dtype):
    """bf16 autocast on a GPU whose base runs in bf16; nothing elsewhere. float16 training would
    need a gradient scaler (its gradients underflow): it is refused, not run unscaled."""
    if dtype == torch.float16:
        raise ConfigError(
            ["`model.dtype: float16` cannot train without a gradient scaler; train in bfloat16 (or float32)"]
        )
    if device.type == "cuda" and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def optimizer_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], lr: float, clip: float) -> None:
    """One update at learning rate `lr`: gradients clipped to norm `clip` (0: not clipped)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(params, clip, foreach=False)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run_plan(
    model,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    records: Sequence[EncodedRecord],
    plan: StepPlan,
    cfg: TrainingConfig,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> StepLog:
    """Carry out a step plan on the model's trainable parameters."""
    log = StepLog()
    model.train()
    cast = autocast_for(device, dtype)
    for micro_batches, lr in zip(plan.steps, plan.lrs, strict=True):
        n = sum(trained_weight(records[i]) for mb in micro_batches for i in mb)
        step_loss = 0.0
        for mb in micro_batches:
            batch = {k: v.to(device) for k, v in collate([records[i] for i in mb], pad_id).items()}
            with cast:
                nll = trained_token_nll(
                    model, batch["input_ids"], batch["attention_mask"], batch["labels"], cfg.loss_chunk_tokens
                )
            if "loss_weights" in batch:  # in trained_token_nll's order: the labelled positions, row-major
                nll = nll * batch["loss_weights"][:, 1:][batch["labels"][:, 1:] != -100]
            loss = nll.sum() / max(n, 1e-12)
            loss.backward()
            step_loss += float(loss.detach())
            log.tokens += int(batch["attention_mask"].sum())
        optimizer_step(optimizer, params, lr, cfg.max_grad_norm)
        log.losses.append(step_loss)
        log.lrs.append(lr)
        log.trained_tokens += sum(trained_count(records[i]) for mb in micro_batches for i in mb)
    model.eval()
    if log.losses and not all(math.isfinite(x) for x in log.losses):
        raise ShardJobError(f"training diverged (loss {log.mean_loss}); lower training.lr", [])
    return log
