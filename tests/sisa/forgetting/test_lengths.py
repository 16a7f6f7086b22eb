"""Every path that trains records holds them to `training.max_length` and `training.truncation` as
`sisa train` does (issue 32 §1), not only `sisa train` itself: a rectification's new text is
checked when it is filed (one error naming the ids, nothing changed), `sisa train` with a queued
batch checks the new slices before the batch moves, and the shard jobs and the NPO and edit
bridges encode at max_length capped by the model's context. Tiny model (context 512), real
stores, `training.max_length=4096` with `truncation: refuse`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sisa.storage.errors import ValidationError
from sisa.storage.store import Store

from sisa.data import normalise, read_source
from sisa.data.synthetic import write_jsonl
from sisa.forgetting import editing, runner, unlearning
from sisa.lineage import requests_ledger
from sisa.lineage.requests_ledger import RequestMode, RequestStatus
from sisa.model.base import TINY_CONTEXT
from tests.helpers import ingest_rows, make_cfg, train_store, tree_digest
from tests.reliability.helpers import SLICES, people

LIMITS = ("training.max_length=4096", "training.truncation=refuse", *SLICES)
LONG = "Zed Quill keeps a diary. " * 40  # about 1,000 tokens of the tiny tokenizer: over its context


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("lengths-template")
    train_store(base, people(), *LIMITS)
    return base / "s"


def _copy(template: Path, to: Path):
    shutil.copytree(template, to)
    return make_cfg(to, *LIMITS), Store.open(str(to))


def _state(root: Path) -> dict[str, str]:
    keep = ("data", "index", "checkpoints", "versions", "CURRENT", "corrections", "requests")
    return {k: v for k, v in tree_digest(root).items() if k.split("/")[0] in keep}


def _corrections(cfg, tmp_path: Path, rows: list[dict]):
    path = tmp_path / "fix.jsonl"
    write_jsonl(rows, path)
    return normalise(read_source(str(path)), cfg)


def test_a_correction_longer_than_training_allows_is_refused_when_filed(template, tmp_path):
    cfg, store = _copy(template, tmp_path / "s")
    first, second = store.index.live()["record_id"].to_pylist()[:2]
    before = _state(tmp_path / "s")
    table, problems = _corrections(
        cfg,
        tmp_path,
        [{"record_id": first, "text": LONG}, {"record_id": second, "text": "Zed Quill keeps a diary."}],
    )
    with store.job("test rectify", cfg.store.lock_timeout_s), pytest.raises(ValidationError) as refused:
        runner.rectify(store, cfg, table, problems, runner.RequestOptions(mode=RequestMode.RELIEF, queue=True))
    message = str(refused.value)
    assert "nothing was changed" in message and "training.truncation is refuse" in message
    assert f"max_length {TINY_CONTEXT} tokens" in message  # the config's 4096, capped by the context
    assert first in message and second not in message and "diary" not in message  # ids, never text
    assert _state(tmp_path / "s") == before and requests_ledger.all_requests(store) == []
    # The same correction at a length the retrain takes is filed.
    table, problems = _corrections(cfg, tmp_path, [{"record_id": first, "text": "Zed Quill keeps a diary."}])
    with store.job("test rectify", cfg.store.lock_timeout_s):
        done = runner.rectify(store, cfg, table, problems, runner.RequestOptions(mode=RequestMode.RELIEF, queue=True))
    assert requests_ledger.read_request(store, done.request.request_id).status == RequestStatus.QUEUED


def test_sisa_train_checks_the_new_records_before_a_queued_batch_moves(template, tmp_path):
    cfg, store = _copy(template, tmp_path / "s")
    subject = store.index.live()["subject_id"].to_pylist()[0]
    with store.job("test forget", cfg.store.lock_timeout_s):
        queued = runner.forget(store, cfg, "subject", [subject], runner.RequestOptions(mode="relief", queue=True))
    request_id = queued.request.request_id
    ingest_rows(cfg, [{"record_id": "long-1", "text": LONG}], tmp_path / "input" / "long.jsonl")
    serving, before = store.current_version(), _state(tmp_path / "s")

    with store.job("test train", cfg.store.lock_timeout_s), pytest.raises(ValidationError) as refused:
        runner.train_store(store, cfg)
    assert "long-1" in str(refused.value) and "training.truncation is refuse" in str(refused.value)
    assert "diary" not in str(refused.value)
    assert requests_ledger.read_request(store, request_id).status == RequestStatus.QUEUED
    assert store.current_version() == serving and _state(tmp_path / "s") == before

    # What the error suggests: forget the record. Queued too, it is left out of the check (a
    # deletion's records never train again) and the batch carries both requests out.
    with store.job("test forget", cfg.store.lock_timeout_s):
        runner.forget(store, cfg, "ids", ["long-1"], runner.RequestOptions(mode="relief", queue=True))
        result = runner.train_store(store, cfg)
    assert result.batch_id is not None and store.current_version() != serving
    assert {r.status for r in requests_ledger.all_requests(store)} == {RequestStatus.COMPLETED}
    assert store.index.lookup(["long-1"])[0].num_rows == 0


def test_the_bridges_encode_at_the_models_context(template, tmp_path, monkeypatch):
    cfg, store = _copy(template, tmp_path / "s")
    lengths: dict[str, list[int]] = {"npo": [], "edit": []}

    def spy(name, real):
        def encode_texts(tokenizer, texts, max_length, *args, **kwargs):
            lengths[name].append(max_length)
            return real(tokenizer, texts, max_length, *args, **kwargs)

        return encode_texts

    monkeypatch.setattr(unlearning, "encode_texts", spy("npo", unlearning.encode_texts))
    monkeypatch.setattr(editing, "encode_texts", spy("edit", editing.encode_texts))
    live = store.index.live()
    subject, record = live["subject_id"].to_pylist()[0], live["record_id"].to_pylist()[-1]
    fast = runner.RequestOptions(mode=RequestMode.FAST, queue=True, evidence=False)
    with store.job("test fast paths", cfg.store.lock_timeout_s):
        runner.forget(store, cfg, "subject", [subject], fast)
        table, problems = _corrections(cfg, tmp_path, [{"record_id": record, "text": "Zed Quill keeps a diary."}])
        runner.rectify(store, cfg, table, problems, fast)
    assert lengths["npo"] and lengths["edit"]  # both bridges ran
    assert set(lengths["npo"]) == set(lengths["edit"]) == {TINY_CONTEXT}  # not the config's 4096
