"""A re-import of old data must not undo a deletion unnoticed."""

from __future__ import annotations

import pytest
from sisa.pipelines import forget, ingest
from sisa.storage.errors import ValidationError
from sisa.storage.store import Store

from sisa.data.synthetic import make_people, write_jsonl
from tests.helpers import make_cfg


def test_forgotten_ids_and_subjects_are_refused_on_reingest(tmp_path):
    cfg = make_cfg(tmp_path / "s")
    people = write_jsonl(make_people(6, seed=3), tmp_path / "people.jsonl")
    ingest.run(cfg, [str(people)])
    forget.run(cfg, "subject", ["person-00002"], evidence=False, quiet=True)
    store = Store.open(cfg.store.uri)
    before = len(store.index)

    with pytest.raises(ValidationError) as e:
        ingest.run(cfg, [str(people)])
    assert "person-00002-job" in e.value.message and "allow_forgotten" in e.value.message
    # A new record about the forgotten subject is refused too, by subject.
    other = write_jsonl(
        [{"record_id": "new-1", "subject_id": "person-00002", "text": "A new fact."}], tmp_path / "new.jsonl"
    )
    with pytest.raises(ValidationError, match="subject"):
        ingest.run(cfg, [str(other)])
    assert len(store.index) == before

    # With renewed consent the records come back.
    res = ingest.run(make_cfg(tmp_path / "s", "ingest.allow_forgotten=true"), [str(people)])
    assert res[0].records == 2
