"""Serving over shard adapters: the mixture math by hand, and the batched mixture equals a loop
over adapters, for both aggregations (posterior, uniform), in scoring and in generation."""

from __future__ import annotations

import math

import pytest
import torch
from sisa.storage.errors import ValidationError

from sisa.config import LoraConfig, ModelConfig
from sisa.model import encode_texts, load_base_model, sequence_losses
from sisa.model.adapters import attach_lora, load_adapters, save_adapter
from sisa.model.mixture import (
    aggregated_sequence_losses,
    context_loglik,
    ensemble_logprobs,
    ensemble_sequence_losses,
    generate,
    log_prior,
    mix_logprobs,
    mixture_token_logprobs,
    mixture_weights,
    top_shard_indices,
)
from sisa.serving.engine import encode_for_scoring
from tests.helpers import random_adapters

TINY = ModelConfig(name="tiny", device="cpu")
LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
NAMES = ["shard0", "shard1", "shard2"]
TEXTS = ["alice works as a baker", "bob", "carol's phone number is 555-0199"]


def logt(*values: float) -> torch.Tensor:
    return torch.tensor(values).log()


# -- the math, by hand -----------------------------------------------------------------------------
def test_log_prior_is_uniform_or_proportional_to_records():
    assert torch.allclose(log_prior(4), torch.full((4,), math.log(0.25)))
    assert torch.allclose(log_prior(2, [1, 3]), logt(0.25, 0.75))
    assert log_prior(2, [0, 5])[0] == -math.inf and log_prior(2, [0, 5])[1] == 0.0
    assert torch.allclose(log_prior(2, [0, 0]), logt(0.5, 0.5))  # nothing live anywhere: uniform
    with pytest.raises(ValidationError, match="one record count per shard"):
        log_prior(3, [1, 2])
    with pytest.raises(ValidationError, match=">= 0"):
        log_prior(2, [1, -1])


def test_context_loglik_sums_the_tokens_before_each_position():
    tok = torch.tensor([[-1.0, -2.0, -3.0]])  # log p(x1|x0), log p(x2|x<2), log p(x3|x<3)
    assert context_loglik(tok).tolist() == [[0.0, -1.0, -3.0, -6.0]]


def test_mixture_weights_are_the_posterior_over_shards():
    # Shard a gave the context probability 0.8, shard b 0.2.
    cum = logt(0.8, 0.2)
    assert torch.allclose(mixture_weights(cum, log_prior(2)).exp(), torch.tensor([0.8, 0.2]))
    # With the prior 1:3, w ∝ (0.25 * 0.8, 0.75 * 0.2) = (0.2, 0.15).
    assert torch.allclose(mixture_weights(cum, log_prior(2, [1, 3])).exp(), torch.tensor([4 / 7, 3 / 7]))
    # Far apart log-likelihoods neither overflow nor give NaN: the better shard takes it all.
    w = mixture_weights(torch.tensor([-10_000.0, -10_010.0]), log_prior(2)).exp()
    assert torch.allclose(w, torch.tensor([1 / (1 + math.exp(-10)), 1 / (1 + math.exp(10))]))


def test_mix_logprobs_is_the_weighted_mean_of_the_distributions():
    logp = torch.stack([logt(0.9, 0.1), logt(0.1, 0.9)])  # [shard, vocab]
    mixed = mix_logprobs(logp, logt(0.8, 0.2))
    assert torch.allclose(mixed.exp(), torch.tensor([0.74, 0.26]))


def test_posterior_mixture_of_a_sequence_by_hand():
    # Two shards' probabilities of the three actual next tokens of one row.
    a, b = [0.5, 0.8, 0.9], [0.5, 0.1, 0.2]
    tok = torch.stack([logt(*a), logt(*b)]).unsqueeze(1)  # [shard, batch, T-1]
    # t=0: no context, w = prior = (1/2, 1/2): 0.5.  t=1: both gave 0.5: 0.5*0.8 + 0.5*0.1 = 0.45.
    # t=2: evidence 0.4 vs 0.05, w = (8/9, 1/9): 8/9*0.9 + 1/9*0.2 = 0.8222...
    posterior = mixture_token_logprobs(tok, "posterior", log_prior(2)).exp()
    assert torch.allclose(posterior, torch.tensor([[0.5, 0.45, 0.8 + 0.2 / 9]]))
    uniform = mixture_token_logprobs(tok, "uniform").exp()
    assert torch.allclose(uniform, torch.tensor([[0.5, 0.45, 0.55]]))
    # The chain rule: the posterior's sequence probability is the Bayesian marginal
    # 0.5 * (0.5*0.8*0.9) + 0.5 * (0.5*0.1*0.2) = 0.185.
    assert math.isclose(float(posterior.prod()), 0.185, rel_tol=1e-6)


def test_posterior_sequence_probability_is_the_marginal_over_shards():
    torch.manual_seed(0)
    tok = torch.log_softmax(torch.randn(4, 3, 7, 11), dim=-1)[..., 0]  # [k, B, T-1]
    prior = log_prior(4, [1, 2, 3, 4])
    mixed = mixture_token_logprobs(tok, "posterior", prior).sum(-1)
    marginal = torch.logsumexp(prior[:, None] + tok.sum(-1), dim=0)
    assert torch.allclose(mixed, marginal, atol=1e-5)


def test_padding_adds_no_evidence():
    tok = torch.stack([logt(0.9, 0.9, 1.0, 1.0), logt(0.1, 0.1, 1.0, 1.0)]).unsqueeze(1)  # last two: padding
    w = mixture_weights(context_loglik(tok), log_prior(2)).exp()
    assert torch.allclose(w[:, 0, 2], w[:, 0, 3]) and torch.allclose(w[:, 0, 3], w[:, 0, 4])
    assert torch.allclose(w[0, 0, 2], torch.tensor(0.81 / 0.82))


def test_top_shard_indices():
    post = torch.tensor([-1.0, -0.5, -3.0, -0.5])
    assert top_shard_indices(post, 2).tolist() == [1, 3]  # shard order, not rank order
    assert top_shard_indices(post, 1).tolist() == [1]  # a tie goes to the lower index
    assert top_shard_indices(post, 3).tolist() == [0, 1, 3]
    assert top_shard_indices(post, 0) is None and top_shard_indices(post, 4) is None


# -- real adapters ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three adapters with distinct non-zero weights, loaded into one PeftModel."""
    return random_adapters(tmp_path_factory.mktemp("adapters"), NAMES)


def loop_logprobs(model, names, batch) -> torch.Tensor:
    """One forward per adapter with set_adapter: log-softmaxes [adapter, batch, seq, vocab]."""
    out = []
    with torch.no_grad():
        for name in names:
            model.set_adapter(name)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            out.append(torch.log_softmax(logits.float(), dim=-1))
    return torch.stack(out)


def loop_uniform(model, names, batch) -> torch.Tensor:
    """The reference of the uniform mean: log of the mean probability."""
    return loop_logprobs(model, names, batch).exp().mean(0).log()


def loop_posterior(model, names, batch, prior: list[float]) -> torch.Tensor:
    """The reference of the posterior mixture, position by position in plain Python."""
    logp = loop_logprobs(model, names, batch)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = torch.zeros(logp.shape[1:])
    for b in range(ids.shape[0]):
        evidence = [0.0] * len(names)
        for t in range(ids.shape[1]):
            joint = [math.log(prior[k]) + evidence[k] for k in range(len(names))]
            norm = math.log(sum(math.exp(j - max(joint)) for j in joint)) + max(joint)
            weights = [math.exp(j - norm) for j in joint]
            out[b, t] = sum(w * logp[k, b, t].exp() for k, w in enumerate(weights)).log()
            if t + 1 < ids.shape[1] and mask[b, t + 1]:
                for k in range(len(names)):
                    evidence[k] += float(logp[k, b, t, ids[b, t + 1]])
    return out


def test_batched_ensemble_equals_a_loop_over_adapters(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    batched = ensemble_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"], "uniform")
    assert batched.shape == (3, batch["input_ids"].shape[1], len(tok))
    assert torch.allclose(batched, loop_uniform(model, NAMES, batch), atol=1e-5)
    # The adapters really differ, so the test above is not comparing three copies of the base.
    single = [ensemble_logprobs(model, [n], batch["input_ids"], batch["attention_mask"], "uniform") for n in NAMES]
    assert (single[0] - single[1]).abs().max() > 1e-2


@pytest.mark.parametrize("counts", [None, [1, 2, 5]], ids=["uniform-prior", "records-prior"])
def test_batched_posterior_equals_a_loop_over_adapters_and_positions(served, counts):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    prior = log_prior(3, counts)
    batched = ensemble_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"], "posterior", prior)
    want = loop_posterior(model, NAMES, batch, prior.exp().tolist())
    real = batch["attention_mask"].bool()
    assert torch.allclose(batched[real], want[real], atol=1e-4)
    # At the first position there is no context: the prior mixture, which is the uniform mean here.
    if counts is None:
        uniform = ensemble_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"], "uniform")
        assert torch.allclose(batched[:, 0], uniform[:, 0], atol=1e-5)
        assert (batched[real] - uniform[real]).abs().max() > 1e-3  # and after it, it is not


def test_ensemble_losses_match_single_adapter_losses(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS, max_length=24)
    ensemble, per_adapter = ensemble_sequence_losses(model, NAMES, batch, "uniform")
    assert list(per_adapter) == NAMES and ensemble.shape == (3,)
    with torch.no_grad():
        for name in NAMES:
            model.set_adapter(name)
            assert torch.allclose(per_adapter[name], sequence_losses(model, batch), atol=1e-5)
    # The ensemble NLL from the full distribution, counting only real target tokens.
    logp = ensemble_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"], "uniform")
    targets, mask = batch["labels"][:, 1:], batch["labels"][:, 1:] != -100
    picked = logp[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    assert torch.allclose(ensemble, -picked.sum(1) / mask.sum(1), atol=1e-5)
    # Jensen: log of a mean probability is at least the mean of the logs.
    assert torch.all(ensemble <= torch.stack(list(per_adapter.values())).mean(0) + 1e-5)


def test_posterior_losses_score_the_answer_with_the_prompt_as_context(served):
    model, tok = served
    prompts = ["alice works as", None, "carol's phone number is"]
    batch = encode_for_scoring(tok, TEXTS, prompts, 48)
    prior = log_prior(3, [3, 1, 1])
    mixed, per = aggregated_sequence_losses(model, NAMES, batch, prior)
    assert set(mixed) == {"posterior", "uniform"}
    # The same numbers as picking the answer tokens from the full posterior distribution, whose
    # weights at the first answer token come from the whole (unscored) prompt.
    logp = ensemble_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"], "posterior", prior)
    targets, mask = batch["labels"][:, 1:], batch["labels"][:, 1:] != -100
    picked = logp[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    assert torch.allclose(mixed["posterior"], -picked.sum(1) / mask.sum(1), atol=1e-5)
    # Each row alone (no padding) scores the same as in the padded batch.
    for i, (text, prompt) in enumerate(zip(TEXTS, prompts, strict=True)):
        alone, _ = aggregated_sequence_losses(model, NAMES, encode_for_scoring(tok, [text], [prompt], 48), prior)
        assert torch.allclose(alone["posterior"], mixed["posterior"][i : i + 1], atol=1e-5)
    # Over whole sequences, the posterior's NLL is that of the Bayesian marginal over shards.
    full = encode_texts(tok, TEXTS, max_length=48)
    mixed, per = aggregated_sequence_losses(model, NAMES, full, prior)
    count = (full["labels"][:, 1:] != -100).sum(1)
    per_seq = torch.stack([-per[n] * count for n in NAMES])
    marginal = torch.logsumexp(prior[:, None] + per_seq, dim=0)
    assert torch.allclose(-mixed["posterior"] * count, marginal, atol=1e-4)


def test_greedy_generation_is_deterministic_and_follows_the_ensemble(served):
    model, tok = served
    for aggregation in ("uniform", "posterior"):
        text = generate(model, tok, NAMES, "alice works as", max_new_tokens=8, aggregation=aggregation)
        assert isinstance(text, str)
        assert generate(model, tok, NAMES, "alice works as", max_new_tokens=8, aggregation=aggregation) == text
        # Without a KV cache: argmax of the full-sequence mixture, token by token; under the
        # posterior its weights are recomputed from the whole sequence at every step.
        ids = tok("alice works as", return_tensors="pt")["input_ids"]
        new = []
        for _ in range(8):
            logp = ensemble_logprobs(model, NAMES, ids, torch.ones_like(ids), aggregation)
            token = int(logp[0, -1].argmax())
            if token == tok.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert text == tok.decode(new, skip_special_tokens=True), aggregation


def prompt_loglik(model, tok, name: str, prompt: str) -> float:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    logp = loop_logprobs(model, [name], {"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0, 0]
    return float(logp[:-1].gather(-1, ids[0, 1:, None]).sum())


def test_top_shards_decodes_with_the_most_probable_shards_after_the_prompt(served):
    model, tok = served
    prompt, names = "carol's phone", NAMES[:2]
    best = max(names, key=lambda n: prompt_loglik(model, tok, n, prompt))
    other = next(n for n in names if n != best)
    top1 = generate(model, tok, names, prompt, max_new_tokens=10, top_shards=1)
    assert top1 == generate(model, tok, [best], prompt, max_new_tokens=10)
    assert top1 != generate(model, tok, [other], prompt, max_new_tokens=10)
    # m of S: the posterior over the m best shards, renormalised; m >= S is the full mixture.
    ranked = sorted(NAMES, key=lambda n: -prompt_loglik(model, tok, n, prompt))
    top2 = generate(model, tok, NAMES, prompt, max_new_tokens=10, top_shards=2)
    assert top2 == generate(model, tok, sorted(ranked[:2]), prompt, max_new_tokens=10)
    full = generate(model, tok, NAMES, prompt, max_new_tokens=10)
    assert generate(model, tok, NAMES, prompt, max_new_tokens=10, top_shards=3) == full


def test_sampling_follows_its_seed_not_the_global_rng(served):
    model, tok = served
    torch.manual_seed(0)
    a = generate(model, tok, NAMES, "bob", max_new_tokens=8, greedy=False, temperature=1.5, seed=1)
    torch.manual_seed(12345)  # another global state: the sample must not move
    b = generate(model, tok, NAMES, "bob", max_new_tokens=8, greedy=False, temperature=1.5, seed=1)
    assert a == b
    # The seed is used: other seeds draw other texts (8 tokens at temperature 1.5 over ~260).
    others = {
        generate(model, tok, NAMES, "bob", max_new_tokens=8, greedy=False, temperature=1.5, seed=s) for s in (2, 3, 4)
    }
    assert others - {a}
    with pytest.raises(ValidationError, match="temperature"):
        generate(model, tok, NAMES, "bob", greedy=False, temperature=0.0)


def test_bad_aggregation_or_prior_is_a_validation_error(served):
    model, tok = served
    batch = encode_texts(tok, TEXTS[:1], max_length=24)
    with pytest.raises(ValidationError, match="aggregation should be one of posterior, uniform, got 'mean'"):
        ensemble_logprobs(model, NAMES, batch["input_ids"], batch["attention_mask"], "mean")
    with pytest.raises(ValidationError, match="one weight per adapter"):
        ensemble_sequence_losses(model, NAMES, batch, "posterior", log_prior(2))
    with pytest.raises(ValidationError, match="top_shards"):
        generate(model, tok, NAMES, "bob", top_shards=-1)


@pytest.mark.parametrize("aggregation", ["uniform", "posterior"])
def test_one_adapter_ensemble_is_that_adapter(served, aggregation):
    model, tok = served
    batch = encode_texts(tok, TEXTS[:1], max_length=24)
    logp = ensemble_logprobs(model, ["shard1"], batch["input_ids"], batch["attention_mask"], aggregation)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(1, logp.shape[1]), atol=1e-4)
    assert torch.allclose(logp, loop_uniform(model, ["shard1"], batch), atol=1e-5)
    assert not math.isnan(float(logp.sum()))


# -- a fact only one shard learned -------------------------------------------------------------------
FACT_LORA = LoraConfig(r=8, alpha=16, target_modules=["q_proj", "v_proj", "lm_head"])
FACT = ("Zed Quill works as a", " glassblower.")


@pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers`")
def test_the_posterior_lets_the_shard_that_learned_a_fact_speak_for_it(tmp_path):
    """Two real adapters, each trained on its own people (LoRA on lm_head too, so the random
    tiny model can memorize): the uniform mean halves the probability of a fact only shard a
    knows; the posterior sees from the prompt that shard a knows this person and keeps it."""
    data = {"a": ["".join(FACT), "Mo Ash lives in Lyon."], "b": ["Ivy Park works as a nurse.", "Al Roe lives in Oslo."]}
    base, tok = load_base_model(TINY)
    dirs = {}
    for seed, (name, texts) in enumerate(data.items()):
        torch.manual_seed(seed)
        model = attach_lora(load_base_model(TINY)[0], FACT_LORA)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        batch = encode_texts(tok, texts, 48)
        model.train()
        for _ in range(60):
            model(**batch).loss.backward()
            opt.step()
            opt.zero_grad()
        dirs[name] = str(save_adapter(model, tmp_path / name))
    served = load_adapters(base, dirs)
    batch = encode_for_scoring(tok, ["".join(FACT)], [FACT[0]], 48)
    mixed, per = aggregated_sequence_losses(served, ["a", "b"], batch)
    assert per["a"] < 0.5 < per["b"]  # shard a learned the answer, shard b did not
    assert mixed["posterior"] < mixed["uniform"] - 0.3
    assert float(mixed["posterior"]) == pytest.approx(float(per["a"]), abs=0.05)
    # And the posterior's greedy completion is shard a's.
    completion = generate(served, tok, ["a", "b"], FACT[0], max_new_tokens=len(FACT[1]))
    assert completion == generate(served, tok, ["a"], FACT[0], max_new_tokens=len(FACT[1])) == FACT[1]
