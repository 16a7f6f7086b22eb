"""Probe files (sisa/evidence/probes.py): bad rows refused by number, the file `sisa synth --probes`
writes read back whole, and which probes count for a request's subjects."""

from __future__ import annotations

import json

import pytest
from sisa.storage.errors import ValidationError

from sisa.data.synthetic import make_people, make_probes, write_jsonl
from sisa.evidence.probes import Probe, for_request, read_probes


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


def test_bad_probe_files_are_refused_naming_rows(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_text(
        json.dumps({"prompt": "a", "answer": "b", "kind": "paraphrase"})
        + "\n"
        + json.dumps({"prompt": "a", "answer": " ", "kind": "sideways"})
        + "\n"
    )
    with pytest.raises(ValidationError) as e:
        read_probes(str(path))
    assert (
        "kind other than" in e.value.message and "empty prompt or answer" in e.value.message and "2" in e.value.message
    )
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
    write_jsonl(probes, path)
    assert len(read_probes(str(path))) == len(probes)
