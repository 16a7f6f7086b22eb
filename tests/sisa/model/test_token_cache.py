"""The shards' token log-probs kept per (adapter, text) (sisa/model/token_cache.py): what the
cache gives is what the batched forward gives, whatever the padding, and it computes a row once."""

from __future__ import annotations

import pytest
import torch

from sisa.model import encode_texts
from sisa.model.mixture import (
    aggregated_sequence_losses,
    ensemble_logprobs,
    log_prior,
    served_token_logprobs,
    shard_token_logprobs,
)
from sisa.model.token_cache import TokenLogprobCache
from tests.helpers import random_adapters

NAMES = ["shard0", "shard1", "shard2"]
TEXTS = ["Ada Lane works as a pilot.", "Bo Chen lives in Lyon, by the river.", "Cy Dunn was born in 1970."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return random_adapters(tmp_path_factory.mktemp("adapters"), NAMES)


def _left_padded(batch: dict[str, torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    left_ids, left_mask = torch.full_like(ids, pad), torch.zeros_like(mask)
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        left_ids[b, ids.shape[1] - n :] = ids[b, :n]
        left_mask[b, ids.shape[1] - n :] = 1
    return left_ids, left_mask


def test_cached_token_logprobs_equal_the_batched_forward_right_or_left_padded(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    cache = TokenLogprobCache()
    for ids, mask in [(batch["input_ids"], batch["attention_mask"]), _left_padded(batch, tok.pad_token_id)]:
        want = shard_token_logprobs(model, NAMES, ids, mask)
        got = shard_token_logprobs(model, NAMES, ids, mask, cache)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
        assert (want != 0).any(dim=-1).all()  # every adapter scored every row: not a table of zeros
    # The left-padded batch holds the same texts: all 9 (adapter, text) rows were found.
    assert (cache.misses, cache.hits, len(cache) >= 9) == (9, 9, True)


def test_served_token_logprobs_are_the_served_distribution_at_the_next_token(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    real = mask[:, 1:].bool()
    for aggregation in ("posterior", "uniform"):
        prior = log_prior(3, [1, 2, 5])
        full = ensemble_logprobs(model, NAMES, ids, mask, aggregation, prior)
        want = full[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        for cache in (None, TokenLogprobCache()):
            got = served_token_logprobs(model, NAMES, ids, mask, aggregation, prior, cache)
            assert torch.allclose(got[real], want[real], atol=1e-4)


def test_a_version_that_shares_adapters_scores_only_its_new_one(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    cache = TokenLogprobCache()
    first, _ = aggregated_sequence_losses(model, NAMES[:2], batch, cache=cache)
    assert cache.misses == 2 * len(TEXTS)
    # The next version keeps shard0 and swaps shard1 for shard2: only shard2's rows are computed.
    second, per = aggregated_sequence_losses(model, [NAMES[0], NAMES[2]], batch, cache=cache)
    assert cache.misses == 3 * len(TEXTS) and cache.hits == len(TEXTS)
    fresh, fresh_per = aggregated_sequence_losses(model, [NAMES[0], NAMES[2]], batch)
    for a in fresh:
        assert torch.allclose(second[a], fresh[a], atol=1e-5)
    assert all(torch.allclose(per[n], fresh_per[n], atol=1e-5) for n in fresh_per)
    assert not torch.allclose(first["posterior"], second["posterior"], atol=1e-3)  # the versions differ


def test_a_text_without_its_eos_is_found_in_the_scored_one(served):
    """Scoring appends eos to a text record; the membership attack reads it without: one forward."""
    model, tok = served
    scored = encode_texts(tok, TEXTS[:1], max_length=64)
    cache = TokenLogprobCache()
    want = shard_token_logprobs(model, NAMES, scored["input_ids"], scored["attention_mask"], cache)
    plain = torch.tensor([tok(TEXTS[0])["input_ids"]])
    assert plain.shape[1] == scored["input_ids"].shape[1] - 1  # the same tokens but the eos
    got = shard_token_logprobs(model, NAMES, plain, torch.ones_like(plain), cache)
    assert cache.misses == len(NAMES) and cache.hits == len(NAMES)
    assert torch.allclose(got, want[..., :-1], atol=1e-6)


def test_clear_forgets_every_text(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    cache = TokenLogprobCache()
    shard_token_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"], cache)
    assert len(cache)
    cache.clear()
    assert len(cache) == 0
    shard_token_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"], cache)
    assert cache.misses == 2 * len(NAMES) * len(TEXTS)
