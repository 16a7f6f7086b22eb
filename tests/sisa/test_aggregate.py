"""Serving over shard adapters: the batched ensemble equals a loop over adapters."""

from __future__ import annotations

import math

import pytest
import torch

from sisa.adapters import attach_lora, load_adapters, save_adapter
from sisa.aggregate import ensemble_logprobs, ensemble_sequence_losses, generate
from sisa.config import LoraConfig, ModelConfig
from sisa.model import encode_texts, load_base_model, sequence_losses
from storage.errors import ValidationError

TINY = ModelConfig(name="tiny", device="cpu")
LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
NAMES = ["shard0", "shard1", "shard2"]
TEXTS = ["alice works as a baker", "bob", "carol's phone number is 555-0199"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three adapters with distinct non-zero weights, loaded into one PeftModel."""
    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for i, name in enumerate(NAMES):
        torch.manual_seed(i)
        model = attach_lora(load_base_model(TINY)[0], LORA)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.5)
        dirs[name] = str(save_adapter(model, root / name))
    base, tokenizer = load_base_model(TINY)
    return load_adapters(base, dirs), tokenizer


def loop_logprobs(model, names, batch) -> torch.Tensor:
    """The reference: one forward per adapter with set_adapter, then the mean probability."""
    probs = []
    with torch.no_grad():
        for name in names:
            model.set_adapter(name)
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
            probs.append(torch.softmax(logits.float(), dim=-1))
    return torch.stack(probs).mean(0).log()


def test_batched_ensemble_equals_a_loop_over_adapters(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    batched = ensemble_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"])
    assert batched.shape == (3, batch["input_ids"].shape[1], len(tok))
    assert torch.allclose(batched, loop_logprobs(model, NAMES, batch), atol=1e-5)
    # The adapters really differ, so the test above is not comparing three copies of the base.
    single = [
        ensemble_logprobs(model, [n], batch["input_ids"], batch["attention_mask"]) for n in NAMES
    ]
    assert (single[0] - single[1]).abs().max() > 1e-2


def test_ensemble_losses_match_single_adapter_losses(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    ensemble, per_adapter = ensemble_sequence_losses(model, NAMES, batch)
    assert list(per_adapter) == NAMES and ensemble.shape == (3,)
    with torch.no_grad():
        for name in NAMES:
            model.set_adapter(name)
            assert torch.allclose(per_adapter[name], sequence_losses(model, batch), atol=1e-5)
    # The ensemble NLL from the full distribution, counting only real target tokens.
    logp = ensemble_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"])
    targets, mask = batch["labels"][:, 1:], batch["labels"][:, 1:] != -100
    picked = logp[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    assert torch.allclose(ensemble, -picked.sum(1) / mask.sum(1), atol=1e-5)
    # Jensen: log of a mean probability is at least the mean of the logs.
    assert torch.all(ensemble <= torch.stack(list(per_adapter.values())).mean(0) + 1e-5)


def test_greedy_generation_is_deterministic_and_follows_the_ensemble(served):
    model, tok = served
    text = generate(model, tok, NAMES, "alice works as", max_new_tokens=8)
    assert isinstance(text, str)
    assert generate(model, tok, NAMES, "alice works as", max_new_tokens=8) == text
    # Without a KV cache: argmax of the full-sequence ensemble, token by token.
    ids = tok("alice works as", return_tensors="pt")["input_ids"]
    new = []
    for _ in range(8):
        logp = ensemble_logprobs(model, NAMES, ids, torch.ones_like(ids))
        token = int(logp[0, -1].argmax())
        if token == tok.eos_token_id:
            break
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert text == tok.decode(new, skip_special_tokens=True)


def test_sampling_follows_its_seed_not_the_global_rng(served):
    model, tok = served
    torch.manual_seed(0)
    a = generate(model, tok, NAMES, "bob", max_new_tokens=8, greedy=False, temperature=1.5, seed=1)
    torch.manual_seed(12345)  # another global state: the sample must not move
    b = generate(model, tok, NAMES, "bob", max_new_tokens=8, greedy=False, temperature=1.5, seed=1)
    assert a == b
    # The seed is used: other seeds draw other texts (8 tokens at temperature 1.5 over ~260).
    others = {generate(model, tok, NAMES, "bob", max_new_tokens=8, greedy=False, temperature=1.5, seed=s) for s in (2, 3, 4)}
    assert others - {a}
    with pytest.raises(ValidationError, match="temperature"):
        generate(model, tok, NAMES, "bob", greedy=False, temperature=0.0)


def test_one_adapter_ensemble_is_that_adapter(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS[:1], max_length=24)
    logp = ensemble_logprobs(model, ["shard1"], batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, logp.shape[1]), atol=1e-4)
    assert torch.allclose(logp, loop_logprobs(model, ["shard1"], batch), atol=1e-5)
    assert not math.isnan(float(logp.sum()))
