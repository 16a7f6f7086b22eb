"""Decoding many prompts from the shard mixture together: continuous batching.

`mixture.sample` decodes one prompt (k completions of it) at a time. Here any number of requests
share every forward: each request is a group of rows (its kept shards × its samples) in one KV
cache, left-padded to a common length, with its own posterior, top-m shards, generators, stop
strings and length. A request joins at the next step (its prompt is prefilled with the other
newcomers', under every shard, which is also what routes it) and leaves when it ends, so 32
clients cost about one batched decode. Row order inside a group is shard-major, as in
`mixture.sample`, and the math per group is the same: the answers are the texts
`mixture.sample` gives one request at a time, up to float rounding of the batch.

Left padding: a row's positions are counted over its real tokens only (`position_ids`) and its
pad columns are masked out, so a row attends to exactly what it would alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from sisa.model.base import TextTokenizer
from sisa.model.mixture import (
    _forward,
    _model_device,
    _prior,
    check_aggregation,
    mix_logprobs,
    mixture_weights,
    top_shard_indices,
    uniform_logprobs,
)
from sisa.storage.errors import ValidationError


@dataclass
class DecodeRequest:
    """One prompt to complete, `len(seeds)` times (OpenAI's `n`)."""

    ids: list[int]  # the prompt's token ids
    max_new_tokens: int = 32
    greedy: bool = True
    temperature: float = 1.0
    seeds: list[int] = field(default_factory=lambda: [0])
    top_shards: int = 0  # keep the m shards of highest posterior after the prompt; 0 = all
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)  # a completion ends before the first of these
    logprobs: int = 0  # also keep the top-k alternatives of the served mixture at every token

    def check(self) -> None:
        if not self.ids:
            raise ValidationError("the prompt encodes to no tokens; give a non-empty prompt")
        if not self.seeds:
            raise ValidationError("a request needs at least one seed (one completion)")
        if self.max_new_tokens < 1:
            raise ValidationError(f"max_new_tokens should be >= 1, got {self.max_new_tokens}")
        if not self.greedy and self.temperature <= 0:
            raise ValidationError(f"temperature should be > 0 when sampling, got {self.temperature}")
        if self.top_shards < 0:
            raise ValidationError(f"top_shards should be >= 0, got {self.top_shards}")


@dataclass
class Completion:
    """One sample's output so far; `finish` is None while it decodes."""

    tokens: list[int] = field(default_factory=list)
    token_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    text: str = ""
    finish: str | None = None  # "stop" (eos or a stop string) | "length" | "cancelled"


@dataclass
class Decoding:
    """A request in the batch: what callers hold and read as it grows."""

    request: DecodeRequest
    completions: list[Completion]
    shards: list[int] = field(default_factory=list)  # indices into the adapter names it decodes with
    steps: int = 0
    cancelled: bool = False

    @property
    def done(self) -> bool:
        return all(c.finish is not None for c in self.completions)

    def cancel(self) -> None:
        """Leave the batch at the next step (a client gone, a deadline passed)."""
        self.cancelled = True


@dataclass
class _Group:
    """A request's rows in the batch: `last` [m, n, V] is the next-token log-dist, not yet chosen."""

    decoding: Decoding
    names: list[str]  # one adapter name per row: m shards × n samples, shard-major
    prior: torch.Tensor  # [m]
    evidence: torch.Tensor  # [m, n]
    last: torch.Tensor  # [m, n, V]
    rngs: list[torch.Generator]

    @property
    def rows(self) -> int:
        return len(self.names)


class MixtureBatch:
    """The running batch of one ensemble (model, tokenizer, adapter names, aggregation, prior).

    `add` prefills newcomers and puts them in the batch; `step` chooses one token for every
    request and runs one forward of every row still decoding. Not thread-safe: one loop drives it.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: TextTokenizer,
        adapter_names: Sequence[str],
        aggregation: str = "posterior",
        log_prior: torch.Tensor | None = None,
    ):
        check_aggregation(aggregation)
        self.model, self.tokenizer, self.aggregation = model, tokenizer, aggregation
        self.names = list(adapter_names)
        self.device = _model_device(model)
        self.prior = _prior(log_prior, len(self.names)).to(self.device)
        self.groups: list[_Group] = []
        self.past = None  # DynamicCache of every row, groups in order
        self.mask: torch.Tensor | None = None  # [rows, T]
        self.positions: torch.Tensor | None = None  # [rows] the next position of each row

    @property
    def active(self) -> bool:
        return bool(self.groups)

    # -- joining ---------------------------------------------------------------------------------
    @torch.no_grad()
    def add(self, requests: Sequence[DecodeRequest]) -> list[Decoding]:
        """Prefill every request's prompt under every shard in one forward, keep its top-m shards,
        and join the batch. Returns the handles, in order."""
        for r in requests:
            r.check()
        if not requests:
            return []
        k = len(self.names)
        out, mask, positions, evidence, last = _prefill(self.model, self.tokenizer, self.names, requests, self.device)
        last = last.view(len(requests), k, -1)
        keep_rows, handles = [], []
        for q, r in enumerate(requests):
            keep = top_shard_indices(self.prior + evidence[q], r.top_shards)
            shards = list(range(k)) if keep is None else keep.tolist()
            n = len(r.seeds)
            keep_rows += [q * k + j for j in shards for _ in range(n)]
            d = Decoding(r, [Completion() for _ in range(n)], shards)
            sel = torch.tensor(shards, device=self.device)
            self.groups.append(
                _Group(
                    d,
                    [self.names[j] for j in shards for _ in range(n)],
                    self.prior[sel],
                    evidence[q, sel].unsqueeze(1).expand(len(shards), n).clone(),
                    last[q, sel].unsqueeze(1).expand(len(shards), n, last.shape[-1]),
                    [torch.Generator().manual_seed(s) for s in r.seeds],
                )
            )
            handles.append(d)
        idx = torch.tensor(keep_rows, device=self.device)
        self._join(out.past_key_values, mask[idx], positions[idx, -1] + 1, idx)
        return handles

    def _join(self, past, mask: torch.Tensor, positions: torch.Tensor, idx: torch.Tensor) -> None:
        past.batch_select_indices(idx)
        if self.past is None:
            self.past, self.mask, self.positions = past, mask, positions
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.past.layers, past.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width, -2), _left_pad(new.keys, width, -2)], 0)
            old.values = torch.cat([_left_pad(old.values, width, -2), _left_pad(new.values, width, -2)], 0)
        self.mask = torch.cat([_left_pad(self.mask, width, -1), _left_pad(mask, width, -1)], 0)
        self.positions = torch.cat([self.positions, positions])

    # -- one step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[Decoding]:
        """Choose the next token of every request, drop the ones that ended, and run one forward
        of the rest. Returns the requests that ended in this step."""
        chosen = [self._choose(g) for g in self.groups]
        ended = [g.decoding for g in self.groups if g.decoding.done]
        if ended:
            keep = [i for i, g in enumerate(self.groups) if not g.decoding.done]
            chosen = [chosen[i] for i in keep]
            self._leave(keep)
        if self.groups:
            self._forward([torch.tensor(c, dtype=torch.long, device=self.device) for c in chosen])
        return ended

    def _choose(self, g: _Group) -> list[int]:
        d, r = g.decoding, g.decoding.request
        if self.aggregation == "uniform":
            mixed = uniform_logprobs(g.last)  # [n, V]
        else:
            mixed = mix_logprobs(g.last, mixture_weights(g.evidence, g.prior))
        if r.greedy:
            tokens = mixed.argmax(-1).tolist()
        else:
            probs = torch.softmax(mixed / r.temperature, dim=-1).cpu()
            tokens = [int(torch.multinomial(probs[i], 1, generator=g.rngs[i])) for i in range(len(g.rngs))]
        d.steps += 1
        for i, token in enumerate(tokens):
            c = d.completions[i]
            if c.finish is not None:
                continue
            if d.cancelled:
                c.finish = "cancelled"
                continue
            if token == self.tokenizer.eos_token_id and not r.ignore_eos:
                c.finish = "stop"
                continue
            c.tokens.append(token)
            c.token_logprobs.append(float(mixed[i, token]))
            if r.logprobs:
                top = torch.topk(mixed[i], r.logprobs)
                c.top_logprobs.append(list(zip(top.indices.tolist(), top.values.tolist(), strict=True)))
            self._update_text(c, r)
            if c.finish is None and d.steps >= r.max_new_tokens:
                c.finish = "length"
        return tokens

    def _update_text(self, c: Completion, r: DecodeRequest) -> None:
        c.text = self.tokenizer.decode(c.tokens, skip_special_tokens=True)
        hits = [c.text.find(s) for s in r.stop if s and s in c.text]
        if hits:
            c.text = c.text[: min(hits)]
            c.finish = "stop"

    def _leave(self, keep_groups: list[int]) -> None:
        starts, offset = [], 0
        for g in self.groups:
            starts.append(offset)
            offset += g.rows
        rows = [r for i in keep_groups for r in range(starts[i], starts[i] + self.groups[i].rows)]
        self.groups = [self.groups[i] for i in keep_groups]
        if not rows:
            self.past = self.mask = self.positions = None
            return
        idx = torch.tensor(rows, device=self.device)
        self.past.batch_select_indices(idx)
        self.mask, self.positions = self.mask[idx], self.positions[idx]
        first = int(self.mask.any(0).nonzero()[0])  # columns that are padding in every row left
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.past.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def _forward(self, chosen: list[torch.Tensor]) -> None:
        x = torch.cat([c.repeat(len(g.names) // len(g.rngs)) for c, g in zip(chosen, self.groups, strict=True)])
        names = [name for g in self.groups for name in g.names]
        for g, c in zip(self.groups, chosen, strict=True):
            m, n = g.last.shape[:2]
            g.evidence = g.evidence + g.last.gather(-1, c.view(1, n, 1).expand(m, n, 1)).squeeze(-1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)
        out = _forward(
            self.model,
            names,
            input_ids=x.view(-1, 1),
            attention_mask=self.mask,
            position_ids=self.positions.view(-1, 1),
            past_key_values=self.past,
            use_cache=True,
        )
        self.past, self.positions = out.past_key_values, self.positions + 1
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        offset = 0
        for g in self.groups:
            m, n = g.last.shape[:2]
            g.last = logp[offset : offset + g.rows].view(m, n, -1)
            offset += g.rows


def _prefill(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    names: Sequence[str],
    requests: Sequence[DecodeRequest],
    device: torch.device,
    use_cache: bool = True,
):
    """One forward of every prompt under every shard (rows request-major, shard inside, prompts
    left-padded): (model output, mask, positions, evidence [q, k] = log p_k(prompt), the
    next-token log-dist of every row [q*k, V])."""
    k = len(names)
    width = max(len(r.ids) for r in requests)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(requests), width), pad, dtype=torch.long)
    mask = torch.zeros((len(requests), width), dtype=torch.long)
    for q, r in enumerate(requests):
        ids[q, width - len(r.ids) :] = torch.tensor(r.ids)
        mask[q, width - len(r.ids) :] = 1
    ids, mask = ids.to(device).repeat_interleave(k, 0), mask.to(device).repeat_interleave(k, 0)
    rows = [names[j] for _ in requests for j in range(k)]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = _forward(model, rows, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=use_cache)
    logp = torch.log_softmax(out.logits.float(), dim=-1)  # [q*k, W, V]
    tok = logp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    # A token is evidence when it and the one predicting it are real (the first token of a
    # left-padded prompt is predicted from a pad); a pad row's logits may be NaN, so `where`.
    real = (mask[:, 1:] * mask[:, :-1]).bool()
    evidence = torch.where(real, tok, torch.zeros_like(tok)).sum(-1).view(len(requests), k)
    return out, mask, positions, evidence, logp[:, -1]


@torch.no_grad()
def route(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    adapter_names: Sequence[str],
    requests: Sequence[DecodeRequest],
    log_prior: torch.Tensor | None = None,
) -> list[list[int]]:
    """The shards (indices into `adapter_names`) each request decodes with: its `top_shards` of
    highest posterior after the prompt, all of them when 0; exactly the rows `MixtureBatch.add`
    keeps, from one forward of every prompt under every shard and no KV cache. This is what a
    request sent to another engine (vLLM, top-1) is routed by."""
    for r in requests:
        r.check()
    if not requests:
        return []
    device = _model_device(model)
    prior = _prior(log_prior, len(adapter_names)).to(device)
    _, _, _, evidence, _ = _prefill(model, tokenizer, adapter_names, requests, device, use_cache=False)
    out = []
    for q, r in enumerate(requests):
        keep = top_shard_indices(prior + evidence[q], r.top_shards)
        out.append(list(range(len(adapter_names))) if keep is None else keep.tolist())
    return out


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Zeros on the left of `dim` up to `width` (a mask's zeros, or masked-out cache entries)."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)


def decode_all(
    model: torch.nn.Module,
    tokenizer: TextTokenizer,
    adapter_names: Sequence[str],
    requests: Sequence[DecodeRequest],
    aggregation: str = "posterior",
    log_prior: torch.Tensor | None = None,
    max_batch: int = 64,
) -> list[Decoding]:
    """Decode every request to its end, at most `max_batch` at a time (a request joins as soon as
    another leaves), and return them in order."""
    batch = MixtureBatch(model, tokenizer, adapter_names, aggregation, log_prior)
    pending = list(requests)
    handles: list[Decoding] = []
    while pending or batch.active:
        room = max_batch - len(batch.groups)
        if pending and room > 0:
            handles += batch.add(pending[:room])
            pending = pending[room:]
        batch.step()
    return handles
