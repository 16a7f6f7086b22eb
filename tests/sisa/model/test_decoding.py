"""Continuous batching (sisa/model/decoding.py): many prompts of different lengths decoded
together give the texts `mixture.sample` gives each alone, whatever joins or leaves the batch."""

from __future__ import annotations

import pytest
from sisa.storage.errors import ValidationError

from sisa.config import LoraConfig, ModelConfig
from sisa.model.decoding import DecodeRequest, MixtureBatch, decode_all
from sisa.model.mixture import log_prior, sample
from tests.helpers import random_adapters

TINY = ModelConfig(name="tiny", device="cpu")
LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
NAMES = ["shard0", "shard1", "shard2"]
PROMPTS = ["alice works as", "bob", "carol's phone number is 555", "a much longer prompt about dave and his job as a"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three adapters with distinct non-zero weights, loaded into one PeftModel."""
    return random_adapters(tmp_path_factory.mktemp("adapters"), NAMES)


def alone(model, tok, prompt: str, **kw) -> list[str]:
    seeds = kw.pop("seeds", [0])
    return sample(model, tok, NAMES, prompt, seeds, **kw)


def request(tok, prompt: str, **kw) -> DecodeRequest:
    return DecodeRequest(tok(prompt)["input_ids"], **kw)


@pytest.mark.parametrize("aggregation", ["posterior", "uniform"])
@pytest.mark.parametrize("top_shards", [0, 1, 2])
def test_prompts_decoded_together_give_the_texts_each_gives_alone(served, aggregation, top_shards):
    model, tok = served
    prior = log_prior(3, [5, 1, 2])
    reqs = [request(tok, p, max_new_tokens=6 + i, top_shards=top_shards) for i, p in enumerate(PROMPTS)]
    together = decode_all(model, tok, NAMES, reqs, aggregation, prior)
    for i, (p, d) in enumerate(zip(PROMPTS, together, strict=True)):
        expected = sample(model, tok, NAMES, p, [0], 6 + i, True, 1.0, aggregation, prior, top_shards)
        assert [c.text for c in d.completions] == expected, (p, aggregation, top_shards)
        assert all(c.finish in ("stop", "length") for c in d.completions)


def test_samples_follow_their_seeds_as_alone(served):
    model, tok = served
    seeds = [[1, 2, 3], [4], [5, 6]]
    reqs = [
        request(tok, p, max_new_tokens=7, greedy=False, temperature=1.3, seeds=s)
        for p, s in zip(PROMPTS, seeds, strict=False)
    ]
    together = decode_all(model, tok, NAMES, reqs)
    for p, s, d in zip(PROMPTS, seeds, together, strict=False):
        assert [c.text for c in d.completions] == alone(
            model, tok, p, seeds=s, max_new_tokens=7, greedy=False, temperature=1.3
        )


def test_a_request_joins_a_running_batch_and_one_leaves_early(served):
    """Requests that arrive while others decode (and a batch smaller than the queue) decode the
    same texts: the batch pads, shifts and trims its cache as they come and go."""
    model, tok = served
    batch = MixtureBatch(model, tok, NAMES)
    first = batch.add([request(tok, PROMPTS[0], max_new_tokens=3, ignore_eos=True)])[0]
    batch.step()
    late = batch.add(
        [
            request(tok, PROMPTS[3], max_new_tokens=9, ignore_eos=True),
            request(tok, PROMPTS[1], max_new_tokens=5, ignore_eos=True),
        ]
    )
    while batch.active:
        batch.step()
    assert first.completions[0].finish == "length" and len(first.completions[0].tokens) == 3
    for d, p, n in [(first, PROMPTS[0], 3), (late[0], PROMPTS[3], 9), (late[1], PROMPTS[1], 5)]:
        assert d.completions[0].text == alone(model, tok, p, max_new_tokens=n, greedy=True, ignore_eos=True)[0]
    # A queue larger than the batch: every request joins as another leaves.
    reqs = [request(tok, p, max_new_tokens=4 + i) for i, p in enumerate(PROMPTS * 2)]
    small = decode_all(model, tok, NAMES, reqs, max_batch=3)
    assert [d.completions[0].text for d in small] == [
        d.completions[0].text for d in decode_all(model, tok, NAMES, reqs)
    ]


def test_stop_strings_cancel_and_logprobs(served):
    model, tok = served
    full = decode_all(model, tok, NAMES, [request(tok, "bob", max_new_tokens=10, ignore_eos=True, logprobs=2)])[
        0
    ].completions[0]
    assert len(full.tokens) == 10 and len(full.token_logprobs) == 10 and all(len(t) == 2 for t in full.top_logprobs)
    # the chosen token is the top alternative when greedy, with the same log-prob
    assert all(
        top[0] == (tok_id, pytest.approx(lp))
        for top, tok_id, lp in zip(full.top_logprobs, full.tokens, full.token_logprobs, strict=True)
    )
    assert all(lp <= 0 for lp in full.token_logprobs)
    stop = full.text[len(full.text) // 2 :][:2]
    if stop.strip():
        cut = decode_all(model, tok, NAMES, [request(tok, "bob", max_new_tokens=10, ignore_eos=True, stop=[stop])])[
            0
        ].completions[0]
        assert cut.finish == "stop" and stop not in cut.text and full.text.startswith(cut.text)
    batch = MixtureBatch(model, tok, NAMES)
    d = batch.add([request(tok, "bob", max_new_tokens=50, ignore_eos=True, seeds=[0, 1], greedy=False)])[0]
    batch.step()
    d.cancel()
    ended = batch.step()
    assert ended == [d] and not batch.active
    assert [c.finish for c in d.completions] == ["cancelled", "cancelled"] and all(
        len(c.tokens) == 1 for c in d.completions
    )


def test_bad_requests_are_refused_before_any_work(served):
    model, tok = served
    batch = MixtureBatch(model, tok, NAMES)
    for bad, match in [
        (DecodeRequest([]), "no tokens"),
        (DecodeRequest([1, 2], seeds=[]), "at least one seed"),
        (DecodeRequest([1, 2], max_new_tokens=0), "max_new_tokens"),
        (DecodeRequest([1, 2], greedy=False, temperature=0), "temperature"),
        (DecodeRequest([1, 2], top_shards=-1), "top_shards"),
    ]:
        with pytest.raises(ValidationError, match=match):
            batch.add([DecodeRequest([1, 2]), bad])
        assert not batch.active


@pytest.mark.parametrize("top_shards", [0, 1])
def test_the_engine_decodes_many_prompts_as_it_decodes_each(served, top_shards):
    """serving.generate_many (greedy recall of many facts at once) equals generate_text per prompt."""
    from sisa.serving.engine import Ensemble, generate_many, generate_text, recalls

    model, tok = served
    ens = Ensemble(model, tok, dict(enumerate(NAMES)), "posterior", {0: 3, 1: 1, 2: 1}, top_shards)
    lengths = [3, 8, 5, 6]
    many = generate_many(ens, PROMPTS, lengths)
    assert many == [generate_text(ens, p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    # recalls: each answer checked against the prompt's own greedy completion, decoded together
    first = generate_text(ens, PROMPTS[0], 6).strip()
    answers = [first[:5] or "?", "certainly not this", first[:5] or "?", PROMPTS[3]]
    needed = [len(tok(a, add_special_tokens=False)["input_ids"]) + 2 for a in answers]
    alone_hits = [
        generate_text(ens, p, n).strip().startswith(a.strip()) for p, n, a in zip(PROMPTS, needed, answers, strict=True)
    ]
    assert recalls(ens, PROMPTS, answers) == alone_hits
    assert alone_hits[0] is (first[:5] != "") and alone_hits[1] is False
