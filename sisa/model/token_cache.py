"""Each shard's log-probabilities of a text's tokens, computed once for a run that measures
several versions.

Every loss the evidence and the demo report (a record's answer loss under each aggregation, the
Min-k% and loss attacks, the posterior mixture itself) is a function of one thing per adapter and
text: log p_k(x_{t+1} | x_<=t) at every position (sisa/model/mixture.py). The versions a request
measures (before, relief or fast path, exact) share every checkpoint but the affected shards',
and the demo and the evidence score the same records and strangers. Kept per (adapter, token
ids), an unaffected shard's row is computed once for all versions, and a record once for all
its measures: on the demo, 4x fewer forward rows than scoring each measure anew.

A cache belongs to an `EnsemblePool` (sisa/serving/engine.py), whose adapter names never come
back for another checkpoint, and lives no longer than it: the texts it is keyed by are the
run's, in memory only, and a purge empties it (`clear`). Scoring a sequence also keeps the
sequence one token shorter (a record with its eos, as scored, and without, as the membership
attack reads it): a causal model's log-probabilities of a prefix are those of the whole.
"""

from __future__ import annotations

import torch

from sisa.model.loss import token_logprobs
from sisa.model.mixture import _context_labels, _forward, _model_device

ROWS_PER_FORWARD = 64  # (adapter, text) rows a forward takes: 16 texts x 4 shards, as before the cache


class TokenLogprobCache:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self.hits = 0  # (adapter, text) rows found
        self.misses = 0  # rows computed

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        self._rows.clear()

    @torch.no_grad()
    def shard_token_logprobs(
        self,
        peft_model: torch.nn.Module,
        adapter_names: list[str],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """[k, B, T-1]: each adapter's log-prob of every real next token of each row (0 where it is
        a pad, or predicted from one), as `mixture`'s batched forward gives it; rows not seen
        before are computed in forwards of up to ROWS_PER_FORWARD (adapter, text) pairs."""
        seqs = [_real_tokens(input_ids[b], attention_mask[b]) for b in range(input_ids.shape[0])]
        wanted = [(name, ids) for name in adapter_names for _, ids in seqs if len(ids) > 1]
        missing = sorted({w for w in wanted if w not in self._rows}, key=lambda w: (len(w[1]), w))
        self.hits += len(wanted) - len(missing)
        self.misses += len(missing)
        for start in range(0, len(missing), ROWS_PER_FORWARD):
            self._compute(peft_model, missing[start : start + ROWS_PER_FORWARD])
        out = torch.zeros(len(adapter_names), *input_ids.shape[:1], input_ids.shape[1] - 1)
        for i, name in enumerate(adapter_names):
            for b, (first, ids) in enumerate(seqs):
                if len(ids) > 1:  # one token predicts nothing
                    out[i, b, first : first + len(ids) - 1] = self._rows[(name, ids)]
        return out

    def _compute(self, peft_model: torch.nn.Module, rows: list[tuple[str, tuple[int, ...]]]) -> None:
        width = max(len(ids) for _, ids in rows)
        x = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, (_, ids) in enumerate(rows):
            x[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[r, : len(ids)] = 1
        device = _model_device(peft_model)
        logits = _forward(
            peft_model, [name for name, _ in rows], input_ids=x.to(device), attention_mask=mask.to(device)
        )
        logp, _ = token_logprobs(logits.logits, _context_labels(x, mask).to(device))
        for r, (name, ids) in enumerate(rows):
            vec = logp[r, : len(ids) - 1].cpu()
            self._rows[(name, ids)] = vec
            if len(ids) > 2:
                self._rows.setdefault((name, ids[:-1]), vec[:-1])


def _real_tokens(ids: torch.Tensor, mask: torch.Tensor) -> tuple[int, tuple[int, ...]]:
    """(where the row's tokens start, the tokens): right- or left-padded, they are contiguous."""
    where = mask.nonzero().flatten()
    if where.numel() == 0:
        return 0, ()
    first, last = int(where[0]), int(where[-1])
    return first, tuple(ids[first : last + 1].tolist())
