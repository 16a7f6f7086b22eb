"""The pure parts of the evidence: AUC, MUSE's privacy leak, answer matching, which probes count
for a request, the questions of a rectification, probe files and `sisa synth --probes`."""

from __future__ import annotations

import json

import pytest

from sisa.data.synthetic import make_people, make_probes
from sisa.evidence import measures as evidence
from sisa.evidence.probes import Probe, for_request, read_probes
from storage.errors import ValidationError


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


def test_probes_count_for_their_subjects_and_locality_for_the_others():
    probes = [
        Probe("p1", " a.", "paraphrase", "s1"),
        Probe("p2", " b.", "related", "s2"),
        Probe("p3", " c.", "paraphrase"),
        Probe("l1", " d.", "locality", "s1"),
        Probe("l2", " e.", "locality", "s2"),
    ]
    general, local = for_request(probes, {"s1"})
    assert [p.prompt for p in general] == ["p1", "p3"] and [p.prompt for p in local] == ["l2"]


def test_a_rectification_expects_the_new_answer_and_forbids_the_old():
    texts, prompts = ["Ada works as a pilot."], ["Ada works as a"]
    probes = [Probe("Ada is employed as a", " pilot.", "paraphrase", "s1"), Probe("Q: Ada's job? A:", " baker.", "related", "s1", old_answer=" pilot.")]
    t = evidence.build_targets(texts, prompts, probes, {"s1"}, new=[("Ada works as a baker.", None)])
    assert t.records == [evidence.Question("Ada works as a", " baker.", " pilot.")]
    assert t.general == [evidence.Question("Ada is employed as a", " baker.", " pilot."), evidence.Question("Q: Ada's job? A:", " baker.", " pilot.")]
    forget = evidence.build_targets(texts, prompts, probes[:1], {"s1"})
    assert forget.records == [evidence.Question("Ada works as a", None, " pilot.")] and not forget.members
    assert not evidence.build_targets(texts, prompts, [], {"s1"}, with_trio=False)  # nothing to measure


def test_bad_probe_files_are_refused_naming_rows(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": "b", "kind": "paraphrase"}) + "\n" + json.dumps({"prompt": "a", "answer": " ", "kind": "sideways"}) + "\n")
    with pytest.raises(ValidationError) as e:
        read_probes(str(path))
    assert "kind other than" in e.value.message and "empty prompt or answer" in e.value.message and "2" in e.value.message
    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n")
    with pytest.raises(ValidationError, match="kind"):
        read_probes(str(path))


def test_synth_probes_ask_every_fact_three_ways_and_keep_it_as_locality(tmp_path):
    rows = make_people(3, seed=5, facts_per_person=5)
    probes = make_probes(rows)
    assert len(probes) == 4 * len(rows)
    for r in rows:
        mine = [p for p in probes if p["subject_id"] == r["subject_id"] and p["answer"] == r["answer"]]
        assert sorted(p["kind"] for p in mine) == ["locality", "paraphrase", "paraphrase", "related"]
        name = r["prompt"].split(" works")[0].split("'s ")[0].split(" lives")[0]
        assert all(name in p["prompt"] for p in mine) and r["prompt"] in {p["prompt"] for p in mine}
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in probes))
    assert len(read_probes(str(path))) == len(probes)


def test_chat_records_and_their_probes_are_asked_through_the_chat_template():
    """A chat model is served conversations: its evidence must ask the records' turns and the
    probes as user turns through the template, not a plain-text reading of them (the demo's
    chat people recalled 0 of 4 locality facts asked as plain text, before any deletion)."""
    from types import SimpleNamespace

    from sisa.config import load_config
    from sisa.data.formats import CHAT, Example
    from sisa.model.base import load_base_model
    from tests.helpers import TINY

    record = Example(CHAT, messages=(("system", "Be brief."), ("user", "What does Ada Lane do?"), ("assistant", "Ada Lane works as a pilot.")))
    stranger = Example(CHAT, messages=(("user", "Where does Bo Li live?"), ("assistant", "Bo Li lives in Lyon.")))
    probes = [Probe("Ada Lane is employed as a", " pilot.", "paraphrase", "p1"), Probe("Bo Li lives in", " Lyon.", "locality", "p2")]
    t = evidence.build_targets([record], None, probes, {"p1"}, holdout=[stranger])
    (q,) = t.records
    assert q.turns == (("system", "Be brief."), ("user", "What does Ada Lane do?")) and q.forbidden == "Ada Lane works as a pilot."
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
    probes = [Probe("Ada Lane is employed as a", " pilot.", "paraphrase", "p1"), Probe("Where does Ada Lane live?", " Lyon.", "related", "p1")]
    t = evidence.build_targets([old], None, probes, {"p1"}, new=[(new, None)])
    (q,) = t.records
    assert (q.expected, q.forbidden, q.turns) == ("Ada Lane works as a baker.", "Ada Lane works as a pilot.", (("user", "What does Ada Lane do?"),))
    # The paraphrase of the corrected fact now expects the new reply and forbids the old answer;
    # the probe of another fact keeps its own answer.
    assert (t.general[0].expected, t.general[0].forbidden) == ("Ada Lane works as a baker.", " pilot.")
    assert (t.general[1].expected, t.general[1].forbidden) == (" Lyon.", None)
