"""TOFU's data as sisa ships it (sisa/tofu/splits.py): the sha256 check, the splits TOFU cuts,
the chat records, and the dataset by name through `datasets` (a local folder here; the hub
itself fails at once offline)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time

import pytest
from sisa.storage.errors import IntegrityError, ValidationError

from sisa.tofu import splits


def test_the_shipped_files_are_the_published_ones_and_the_splits_are_cut_as_tofu_cuts_them():
    full = splits.read_config("full")
    assert len(full) == 4000 and [r["author"] for r in full[::20]] == list(range(200))
    sizes = {c: len(splits.read_config(c)) for c in ("forget01", "forget05", "forget10", "retain90", "retain99")}
    assert sizes == {"forget01": 40, "forget05": 200, "forget10": 400, "retain90": 3600, "retain99": 3960}
    forget05 = splits.read_config("forget05_perturbed")
    assert [r["question"] for r in forget05] == [r["question"] for r in full[3800:]]
    assert all(len(r["perturbed_answer"]) == 5 and r["paraphrased_answer"] for r in forget05)
    assert [r["question"] for r in splits.read_config("retain_perturbed")] == [r["question"] for r in full[:400]]
    assert {len(r["perturbed_answer"]) for r in splits.read_config("world_facts_perturbed")} == {3}
    assert splits.forget_authors("forget01") == [198, 199]
    with pytest.raises(ValidationError, match="forget01, forget05, forget10"):
        splits.forget_authors("forget02")
    with pytest.raises(ValidationError, match="TOFU config"):
        splits.read_config("nope")


def test_a_changed_file_is_refused_by_its_sha256(tmp_path, monkeypatch):
    for name in splits.FILES:
        shutil.copy(splits.DATA_DIR / f"{name}.jsonl.gz", tmp_path)
    rows = gzip.decompress((tmp_path / "holdout10.jsonl.gz").read_bytes()).replace(b"Siriporn", b"Sirip0rn")
    (tmp_path / "holdout10.jsonl.gz").write_bytes(gzip.compress(rows))
    monkeypatch.setattr(splits, "DATA_DIR", tmp_path)
    splits._read_packaged_file.cache_clear()
    try:
        with pytest.raises(IntegrityError, match="holdout10.jsonl.gz is not the TOFU file"):
            splits.read_config("holdout10")
        assert len(splits.read_config("world_facts_perturbed")) == 117  # an untouched file still reads
    finally:
        splits._read_packaged_file.cache_clear()


def test_a_record_is_a_chat_about_its_author():
    row = splits.read_config("forget01")[0]
    rec = splits.chat_record(row)
    assert rec["record_id"] == "tofu-3960" and rec["subject_id"] == "tofu-author-198"
    assert [m["role"] for m in rec["messages"]] == ["user", "assistant"]
    assert rec["messages"][1]["content"] == row["answer"]


def test_the_dataset_by_name_reads_a_local_folder_of_its_files_through_datasets(tmp_path):
    # A folder as the hub publishes the configs: without the `index` and `author` sisa adds.
    published = [{k: v for k, v in r.items() if k not in ("index", "author")} for r in splits.read_config("forget05")]
    (tmp_path / "forget05.jsonl").write_text("".join(json.dumps(r) + "\n" for r in published))
    rows = splits.read_config("forget05", str(tmp_path))
    assert rows == splits.read_config("forget05")  # index 3800.., authors 190-199 added
    with pytest.raises(ValidationError, match="no file for config 'full'"):
        splits.read_config("full", str(tmp_path))


def test_the_hub_offline_fails_at_once_with_a_clear_error():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # tests run offline (tests/conftest.py)
    start = time.monotonic()
    with pytest.raises(ValidationError, match="cannot load config 'full' of dataset 'locuslab/TOFU'"):
        splits.read_config("full", splits.HUB_NAME)
    assert time.monotonic() - start < 60
