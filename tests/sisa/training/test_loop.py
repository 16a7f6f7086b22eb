"""The training engine (sisa/training/loop.py) and the chunked token loss
(sisa/model/token_loss.py): step plans that are pure, accumulation that gives the step one batch
would, schedules from transformers, and every trainer feature still bit-exact under replay.

The bug feared most: a trainer feature that makes a retrain differ from a replay from scratch
(a schedule that spans slices, a sampler seeded by time, a window that crosses a slice), or an
accumulated step whose loss weighs short micro-batches up.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sisa.storage.errors import ConfigError

from sisa.config import build_config
from sisa.data.formats import CHAT, Example
from sisa.model import adapters
from sisa.model.base import load_base_model, schedule_multipliers
from sisa.model.loss import collate, encode_records
from sisa.model.token_loss import record_nll, trained_token_nll
from sisa.training.loop import (
    GROUP_WINDOW_STEPS,
    StepPlan,
    autocast_for,
    group_by_length,
    plan_steps,
    run_plan,
    trained_count,
)
from sisa.training.shard_job import make_optimizer, sample_order


def _lora(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def _training(*overrides: str):
    return build_config(overrides=list(overrides)).training


def test_a_plan_is_a_pure_function_of_lengths_order_config_and_seed():
    lengths = [5, 40, 12, 33, 7, 8, 21, 3, 19, 27]
    order = sample_order(len(lengths), 37, seed=11)
    cfg = _training("training.batch_size=2", "training.gradient_accumulation_steps=2", "training.lr_scheduler=cosine")
    plan = plan_steps(lengths, order, cfg, seed=11)
    assert (
        plan == plan_steps(lengths, order, cfg, seed=11)
        and plan.digest() == plan_steps(lengths, order, cfg, 11).digest()
    )
    assert plan != plan_steps(lengths, order, cfg, seed=12)
    # Steps of batch_size * accumulation draws, in micro-batches of batch_size; the draws are the order's.
    assert len(plan.steps) == -(-37 // 4) and all(len(mb) <= 2 for s in plan.steps for mb in s)
    assert sorted(i for s in plan.steps for mb in s for i in mb) == sorted(order)
    assert len(plan.lrs) == len(plan.steps) and plan.lrs[-1] < plan.lrs[0]


def test_group_by_length_keeps_each_windows_draws_and_sorts_them_into_like_steps():
    lengths = list(range(100, 0, -3))
    order = sample_order(len(lengths), 80, seed=3)
    steps = [order[i : i + 4] for i in range(0, 80, 4)]
    grouped = group_by_length(steps, lengths, seed=3)
    per = 4 * GROUP_WINDOW_STEPS
    for w in range(0, 80, per):
        assert sorted(i for s in grouped[w // 4 : (w + per) // 4] for i in s) == sorted(order[w : w + per])
    spread = lambda ss: sum(max(lengths[i] for i in s) - min(lengths[i] for i in s) for s in ss)  # noqa: E731
    assert spread(grouped) < spread(steps) / 3  # like lengths share a step: little padding


@pytest.mark.parametrize(("records", "draws"), [(16, 240), (26, 216), (100, 300)])
def test_grouping_never_puts_one_records_copies_in_a_step_when_the_window_has_others(records, draws):
    """A small slice trained for many epochs has several copies of each record in a window. Sorted
    by length alone, a record's copies sat side by side: the demo's slice of 16 facts trained in
    steps of 8 holding 2 records 4 times over, each record in a quarter of the steps, and SmolLM2
    recalled 3 of 16 trained facts where it had recalled 16. Every step holds as many distinct
    records as it can (a step that straddles two passes may hold one record twice), and still
    pads less than ungrouped steps."""
    lengths = [10 + (i * 7) % 23 for i in range(records)]
    order = sample_order(records, draws, seed=7)
    cfg = _training("training.batch_size=4", "training.gradient_accumulation_steps=2")
    plan = plan_steps(lengths, order, cfg, seed=7)
    flat = plan_steps(lengths, order, dataclasses.replace(cfg, group_by_length=False), seed=7)
    distinct = []
    for step in plan.steps:
        drawn = [i for mb in step for i in mb]
        distinct.append(len(set(drawn)))
        assert len(set(drawn)) >= min(len(drawn), records) - 1, drawn
    assert sum(distinct) >= 0.95 * sum(min(len([i for mb in s for i in mb]), records) for s in plan.steps)

    def steps_with(p: StepPlan) -> list[int]:
        return [sum(any(i == r for mb in s for i in mb) for s in p.steps) for r in range(records)]

    def pads(p: StepPlan) -> int:
        return sum(max(lengths[i] for i in mb) * len(mb) - sum(lengths[i] for i in mb) for s in p.steps for mb in s)

    assert min(steps_with(plan)) >= min(steps_with(flat)) - 1  # every record trained about as often
    assert pads(plan) < pads(flat)


def test_schedules_are_transformers_own_restarting_each_slice():
    assert schedule_multipliers("constant", 0, 4) == [1.0] * 4
    assert schedule_multipliers("constant", 2, 4) == [0.0, 0.5, 1.0, 1.0]
    assert schedule_multipliers("linear", 1, 5) == [0.0, 1.0, 0.75, 0.5, 0.25]
    cos = schedule_multipliers("cosine", 0, 4)
    assert cos[0] == 1.0 and cos[2] == pytest.approx(0.5) and cos == sorted(cos, reverse=True)
    cfg = _training("training.lr_scheduler=linear", "training.warmup_ratio=0.25", "training.lr=0.01")
    plan = plan_steps([4] * 8, list(range(8)), dataclasses.replace(cfg, batch_size=1, group_by_length=False), 0)
    assert plan.lrs == tuple(0.01 * m for m in schedule_multipliers("linear", 2, 8))


@pytest.fixture(scope="module")
def tiny():
    cfg = build_config(overrides=["lora.r=4", "lora.target_modules=q_proj,v_proj"])
    base, tok = load_base_model(cfg.model)
    return cfg, base, tok


TEXTS = [
    "short one",
    "a somewhat longer record about a person who lives somewhere",
    "mid length text here",
    "x",
    "another record with several more words in it than most",
    "seven words are in this one here",
    "tiny",
    "the last record of the step",
]


def test_the_chunked_loss_of_trained_tokens_equals_the_full_logits_loss(tiny):
    cfg, base, tok = tiny
    batch = collate(encode_records(tok, TEXTS, 48, "all"), tok.pad_token_id)
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        full = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), reduction="none"
        )
        full = full[batch["labels"][:, 1:].reshape(-1) != -100]
        for chunk in (5, 4096):
            nll = trained_token_nll(base, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk)
            torch.testing.assert_close(nll, full, rtol=1e-5, atol=1e-5)
        sums, counts = record_nll(base, batch, 7)
    assert counts.tolist() == [trained_count(r) for r in encode_records(tok, TEXTS, 48, "all")]
    torch.testing.assert_close(sums.sum(), full.sum(), rtol=1e-5, atol=1e-4)


def _step(tiny, records, micro_batches, training) -> tuple[dict[str, torch.Tensor], float]:
    """One optimizer step of a fresh seeded adapter over `micro_batches`: its LoRA tensors after
    the step and the step's loss."""
    cfg, _, tok = tiny
    base, _ = load_base_model(cfg.model)
    torch.manual_seed(0)
    model = adapters.attach_lora(base, cfg.lora)
    params = adapters.trainable_parameters(model)
    opt = make_optimizer(params, cfg)
    plan = StepPlan((tuple(micro_batches),), (cfg.training.lr,))
    log = run_plan(model, opt, params, records, plan, training, tok.pad_token_id, torch.device("cpu"), torch.float32)
    return {k: v.detach().clone() for k, v in _lora(model).items()}, log.losses[0]


def _one_step(tiny, batch_size: int, accumulation: int) -> tuple[dict[str, torch.Tensor], float]:
    cfg, _, tok = tiny
    t = dataclasses.replace(cfg.training, batch_size=batch_size, gradient_accumulation_steps=accumulation)
    micro = [tuple(range(i, i + batch_size)) for i in range(0, 8, batch_size)]
    return _step(tiny, encode_records(tok, TEXTS, 48, "all"), micro, t)


def test_an_accumulated_step_is_the_step_one_batch_would_take(tiny):
    """8 records of very different lengths: as one batch, as 4 micro-batches of 2 and as 8 of 1,
    the step's loss is the mean over all its trained tokens (not a mean of micro-batch means) and
    the update is the same up to float rounding."""
    whole, loss = _one_step(tiny, 8, 1)
    for bs, acc in ((2, 4), (1, 8)):
        parts, part_loss = _one_step(tiny, bs, acc)
        assert part_loss == pytest.approx(loss, rel=1e-5)
        for k in whole:
            torch.testing.assert_close(parts[k], whole[k], rtol=1e-4, atol=1e-6)
    _, tok = tiny[0], tiny[2]
    recs = encode_records(tok, TEXTS, 48, "all")
    per_record_means = []
    cfg, base, _ = tiny
    with torch.no_grad():
        for r in recs:
            b = collate([r], tok.pad_token_id)
            s, c = record_nll(base, b, 4096)
            per_record_means.append(float(s / c))
    assert loss != pytest.approx(sum(per_record_means) / len(per_record_means), rel=1e-3)


def test_gradient_checkpointing_trains_the_adapter_and_float16_is_refused(tiny):
    cfg, _, tok = tiny
    base, _ = load_base_model(cfg.model)
    torch.manual_seed(0)
    model = adapters.attach_lora(base, cfg.lora)
    from sisa.model.base import enable_gradient_checkpointing

    enable_gradient_checkpointing(base)
    params = adapters.trainable_parameters(model)
    before = {k: v.detach().clone() for k, v in _lora(model).items()}
    opt = make_optimizer(params, cfg)
    records = encode_records(tok, TEXTS, 48, "all")
    plan = StepPlan(((tuple(range(8)),),), (cfg.training.lr,))
    run_plan(model, opt, params, records, plan, cfg.training, tok.pad_token_id, torch.device("cpu"), torch.float32)
    after = _lora(model)
    assert any(not torch.equal(before[k], after[k]) for k in before if "lora_B" in k)  # LoRA got gradients
    unchecked, _ = _one_step(tiny, 8, 1)
    for k in unchecked:  # recomputing the activations changes no bit on this CPU
        assert torch.equal(unchecked[k], after[k].detach()), k
    with pytest.raises(ConfigError, match="float16"):
        autocast_for(torch.device("cpu"), torch.float16)


CHATS = [
    Example(CHAT, messages=(("user", f"Where does person {i} live?"), ("assistant", f"In town {i * 7}.")))
    for i in range(8)
]


def _chat_step(tiny, loss_on: str, prompt_weight: float) -> tuple[dict[str, torch.Tensor], float]:
    cfg, _, tok = tiny
    records = encode_records(tok, CHATS, 64, loss_on, prompt_weight)
    return _step(tiny, records, [tuple(range(0, 4)), tuple(range(4, 8))], cfg.training)


def test_prompt_loss_weight_runs_from_completion_only_to_every_token(tiny):
    """training.prompt_loss_weight weighs a chat record's user turn (and template) in the loss:
    0 is completion-only exactly, 1 is loss_on=all exactly, and 0.1 is the weighted mean of the
    two token sets' losses, over the whole accumulated step."""
    cfg, base, tok = tiny
    none = encode_records(tok, CHATS, 64, "completion", 0.0)
    assert all(r.weights is None for r in none)
    assert none == encode_records(tok, CHATS, 64, "completion")  # 0: the records as before the key
    weighted = encode_records(tok, CHATS, 64, "completion", 0.1)
    for r, plain in zip(weighted, none, strict=True):
        assert all(r.trained) and r.input_ids == plain.input_ids
        assert r.weights == [1.0 if t else 0.1 for t in plain.trained]
    assert all(r.weights is None for r in encode_records(tok, CHATS, 64, "all", 0.1))  # ignored under all
    assert all(r.weights is None for r in encode_records(tok, TEXTS, 64, "completion", 0.1))  # text: all trained

    everything, loss_all = _chat_step(tiny, "all", 0.0)
    full, loss_full = _chat_step(tiny, "completion", 1.0)
    assert loss_full == pytest.approx(loss_all, rel=1e-6)
    for k in everything:
        torch.testing.assert_close(full[k], everything[k], rtol=1e-5, atol=1e-7)
    only, loss_only = _chat_step(tiny, "completion", 0.0)
    assert any(not torch.equal(only[k], everything[k]) for k in only)

    # The fresh adapter's B is 0, so the first loss is the base's: check it against the base.
    with torch.no_grad():
        s_all, c_all = record_nll(base, collate(encode_records(tok, CHATS, 64, "all"), tok.pad_token_id), 4096)
        s_c, c_c = record_nll(base, collate(none, tok.pad_token_id), 4096)
    prompt_s, prompt_c = float((s_all - s_c).sum()), float((c_all - c_c).sum())
    assert loss_only == pytest.approx(float(s_c.sum()) / float(c_c.sum()), rel=1e-5)
    _, loss_tenth = _chat_step(tiny, "completion", 0.1)
    expected = (float(s_c.sum()) + 0.1 * prompt_s) / (float(c_c.sum()) + 0.1 * prompt_c)
    assert loss_tenth == pytest.approx(expected, rel=1e-5)
    assert prompt_c > 0 and loss_tenth != pytest.approx(loss_only, rel=1e-3)


def test_a_prompt_weight_out_of_range_is_refused(tiny):
    _, _, tok = tiny
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="prompt_loss_weight"):
            encode_records(tok, CHATS, 64, "completion", bad)
