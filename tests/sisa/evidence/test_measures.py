"""The pure parts of the evidence (sisa/evidence/measures.py): AUC, MUSE's privacy leak, answer
matching, the questions of a forget and of a rectification, chat records asked through the template.
Probe files and which probes count are in tests/sisa/evidence/test_probes.py."""

from __future__ import annotations

import pytest

from sisa.evidence import measures as evidence
from sisa.evidence.probes import Probe


def test_auc_counts_pairs_and_ties():
    assert evidence.auc([3, 4], [1, 2]) == 1.0
    assert evidence.auc([1, 2], [3, 4]) == 0.0
    assert evidence.auc([1, 2], [1, 2]) == 0.5
    assert evidence.auc([2, 0], [1]) == 0.5
    assert evidence.auc([], [1]) is None


def test_privleak_is_relative_to_the_exact_version():
    assert evidence.privleak(0.75, 0.5) == pytest.approx(50.0)  # under-unlearning: more member-like
    assert evidence.privleak(0.4, 0.5) == pytest.approx(-20.0)  # over-unlearning
    assert evidence.privleak(0.5, 0.5) == 0.0
    assert evidence.privleak(None, 0.5) is None
    by = {"before": {"membership": {"auc": 0.9}}, "exact": {"membership": {"auc": 0.45}}, "relief": {}}
    evidence.add_privleak(by)
    assert by["exact"]["membership"]["privleak_vs_exact"] == 0.0
    assert by["before"]["membership"]["privleak_vs_exact"] == pytest.approx(100.0)


def test_answers_match_by_normalised_containment():
    assert evidence._contains(" Futures  trader. He", " futures trader.")
    assert not evidence._contains(" futures", " futures trader.")
    assert not evidence._contains("anything", None)
    assert evidence.answer_of("Ada works as a pilot.", "Ada works as a") == " pilot."
    assert evidence.answer_of("Ada works as a pilot.", "Bob works as a") is None


def test_a_rectification_expects_the_new_answer_and_forbids_the_old():
    texts, prompts = ["Ada works as a pilot."], ["Ada works as a"]
    probes = [
        Probe("Ada is employed as a", " pilot.", "paraphrase", "s1"),
        Probe("Q: Ada's job? A:", " baker.", "related", "s1", old_answer=" pilot."),
    ]
    t = evidence.build_targets(texts, prompts, probes, {"s1"}, new=[("Ada works as a baker.", None)])
    assert t.records == [evidence.Question("Ada works as a", " baker.", " pilot.")]
    assert t.general == [
        evidence.Question("Ada is employed as a", " baker.", " pilot."),
        evidence.Question("Q: Ada's job? A:", " baker.", " pilot."),
    ]
    forget = evidence.build_targets(texts, prompts, probes[:1], {"s1"})
    assert forget.records == [evidence.Question("Ada works as a", None, " pilot.")] and not forget.members
    assert not evidence.build_targets(texts, prompts, [], {"s1"}, with_trio=False)  # nothing to measure


def test_chat_records_and_their_probes_are_asked_through_the_chat_template():
    """A chat model is served conversations: its evidence must ask the records' turns and the
    probes as user turns through the template, not a plain-text reading of them (the demo's
    chat people recalled 0 of 4 locality facts asked as plain text, before any deletion)."""
    from types import SimpleNamespace

    from sisa.config import load_config
    from sisa.data.formats import CHAT, Example
    from sisa.model.base import load_base_model
    from tests.helpers import TINY

    record = Example(
        CHAT,
        messages=(
            ("system", "Be brief."),
            ("user", "What does Ada Lane do?"),
            ("assistant", "Ada Lane works as a pilot."),
        ),
    )
    stranger = Example(CHAT, messages=(("user", "Where does Bo Li live?"), ("assistant", "Bo Li lives in Lyon.")))
    probes = [
        Probe("Ada Lane is employed as a", " pilot.", "paraphrase", "p1"),
        Probe("Bo Li lives in", " Lyon.", "locality", "p2"),
    ]
    t = evidence.build_targets([record], None, probes, {"p1"}, holdout=[stranger])
    (q,) = t.records
    assert (
        q.turns == (("system", "Be brief."), ("user", "What does Ada Lane do?"))
        and q.forbidden == "Ada Lane works as a pilot."
    )
    assert t.general[0].turns == (("user", "Ada Lane is employed as a"),) and t.general[0].forbidden == " pilot."
    assert t.locality[0].turns == (("user", "Bo Li lives in"),)
    assert t.members == [record.messages] and t.holdout == [stranger.messages]  # read as rendered conversations

    _, tokenizer = load_base_model(load_config(TINY).model)
    ens = SimpleNamespace(tokenizer=tokenizer)
    prompt, special, extra = evidence._asked(ens, q)
    assert prompt.endswith("<|user|>What does Ada Lane do?<eos><|assistant|>") and "<|system|>Be brief." in prompt
    assert special is False and extra == evidence.CHAT_REPLY_EXTRA  # the template carries its own bos
    # Text records and their probes stay plain text.
    t = evidence.build_targets(["Ada Lane works as a pilot."], ["Ada Lane works as a"], probes, {"p1"})
    assert t.records[0].turns is None and t.general[0].turns is None
    assert evidence._asked(ens, t.records[0]) == ("Ada Lane works as a", True, 4)


def test_a_chat_rectification_expects_the_new_reply_and_maps_probes_of_the_old_fact():
    from sisa.data.formats import CHAT, Example

    old = Example(CHAT, messages=(("user", "What does Ada Lane do?"), ("assistant", "Ada Lane works as a pilot.")))
    new = Example(CHAT, messages=(("user", "What does Ada Lane do?"), ("assistant", "Ada Lane works as a baker.")))
    probes = [
        Probe("Ada Lane is employed as a", " pilot.", "paraphrase", "p1"),
        Probe("Where does Ada Lane live?", " Lyon.", "related", "p1"),
    ]
    t = evidence.build_targets([old], None, probes, {"p1"}, new=[(new, None)])
    (q,) = t.records
    assert (q.expected, q.forbidden, q.turns) == (
        "Ada Lane works as a baker.",
        "Ada Lane works as a pilot.",
        (("user", "What does Ada Lane do?"),),
    )
    # The paraphrase of the corrected fact now expects the new reply and forbids the old answer;
    # the probe of another fact keeps its own answer.
    assert (t.general[0].expected, t.general[0].forbidden) == ("Ada Lane works as a baker.", " pilot.")
    assert (t.general[1].expected, t.general[1].forbidden) == (" Lyon.", None)


def test_membership_scores_of_a_batch_are_each_texts_alone(tmp_path):
    """The batched forward (right padding, pads never context) scores each text as it scores
    alone; both attacks' AUCs come with an interval that holds them."""
    from sisa.serving.engine import Ensemble
    from tests.helpers import random_adapters

    model, tok = random_adapters(tmp_path, ["shard0", "shard1"])
    ens = Ensemble(model, tok, {0: "shard0", 1: "shard1"})
    texts = ["Ada Lane works as a pilot.", "Bo", "Cy Moss lives in a very small town by the sea.", "Di Roe."]
    min_k, mean = evidence.membership_scores(ens, texts, 32, batch_size=3)
    for i, text in enumerate(texts):
        alone_min_k, alone_mean = evidence.membership_scores(ens, [text], 32)
        assert min_k[i] == pytest.approx(alone_min_k[0], abs=1e-4)
        assert mean[i] == pytest.approx(alone_mean[0], abs=1e-4)
        assert min_k[i] <= mean[i] + 1e-6  # the least likely tokens' mean is below the mean
    m = evidence.membership(ens, texts[:2], texts[2:], 32)
    assert m["members"] == 2 and m["holdout"] == 2 and m["bootstrap_resamples"] == 1000
    for key in ("auc", "loss_auc"):
        lo, hi = m[f"{key}_ci95"]
        assert lo <= m[key] <= hi


def test_long_records_score_whole_and_a_cut_is_counted(tmp_path):
    """Scoring and the evidence read a record up to the model's context, never cut to
    training.max_length (issue 32 §1); what the model cannot read whole is counted."""
    from sisa.model.lengths import effective_max_length
    from sisa.serving import engine
    from tests.helpers import random_adapters

    model, tok = random_adapters(tmp_path, ["shard0", "shard1"])
    ens = engine.Ensemble(model, tok, {0: "shard0", 1: "shard1"})
    assert engine.scoring_length(ens) == 512 == effective_max_length(4096, 512)  # the tiny model's context
    long = "Ada Lane works as a pilot and flies the long route over the mountains every week. " * 3
    assert len(tok(long)["input_ids"]) > 200
    whole, _ = engine.score_records(ens, [long], ["Ada Lane works as a"])
    assert whole == engine.score_records(ens, [long], ["Ada Lane works as a"], 512)[0]
    assert whole != engine.score_records(ens, [long], ["Ada Lane works as a"], 48)[0]
    batch = engine.encode_for_scoring(tok, [long], None, engine.scoring_length(ens))
    assert int((batch["labels"] != -100).sum()) == len(tok(long)["input_ids"]) + 1  # every token and eos
    # The evidence says how many texts it scored only in part.
    targets = evidence.Targets(members=[long, "Bo."], holdout=["Cy.", "Di."], leak_k=0)
    numbers, _ = evidence.measure(ens, targets, 64)
    assert numbers["cut_texts"] == {"max_length": 64, "n": 1}
    numbers, _ = evidence.measure(ens, targets, engine.scoring_length(ens))
    assert "cut_texts" not in numbers and numbers["membership"]["members"] == 2
