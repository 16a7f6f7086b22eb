"""Ingest keeps the reader's chunks (no copy of the text column) and still writes what a
single-chunk table writes; its per-row hashing runs a block at a time."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
from sisa.storage.store import Store

from sisa.config import load_config
from sisa.data import ingestion, sources
from sisa.data.ingestion import _ChunkwiseTake, commit_batch, content_sha256, prepare_batches
from sisa.data.sources import read_source
from sisa.data.synthetic import write_jsonl
from sisa.lineage import checkpoints
from tests.helpers import TINY


def test_content_sha256_per_row_across_chunks_and_blocks(monkeypatch):
    monkeypatch.setattr(ingestion, "HASH_BLOCK", 7)
    texts = [f"text {i} é" * (i % 5 + 1) for i in range(50)]
    expected = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    assert content_sha256(pa.array(texts)).to_pylist() == expected
    assert content_sha256(pa.chunked_array([texts[:3], [], texts[3:40], texts[40:]])).to_pylist() == expected
    assert content_sha256(pa.array(texts).slice(5, 20)).to_pylist() == expected[5:25]
    assert content_sha256(pa.array([], pa.string())).to_pylist() == []


def test_chunkwise_take_equals_take():
    rng = np.random.default_rng(0)
    n = 1_000

    def cut(values, sizes):
        return pa.chunked_array(np.split(np.asarray(values, dtype=object), np.cumsum(sizes)[:-1]), pa.string())

    table = pa.table(
        {
            "a": cut([f"a{i}" for i in range(n)], [1, 300, 0, 299, 400]),
            "b": cut([f"b{i}" * (i % 3) for i in range(n)], [500, 500]),
            "c": pa.array(np.arange(n)),
        }
    )
    take = _ChunkwiseTake(table)
    for size in (1, 5, 299, 700, n):
        rows = np.sort(rng.choice(n, size, replace=False))
        assert take(rows).equals(table.take(pa.array(rows)))
    assert take(np.array([], np.int64)).num_rows == 0


def _placed(uri: str) -> tuple[dict, pa.Table]:
    """Every slice's records in order (without the ingest's id and time) and the index rows."""
    store = Store.open(uri)
    columns = ["record_id", "text", "subject_id", "shard_id", "slice_idx", "source", "content_sha256", "team"]
    slices = {
        (sh, sl): store.read_slice(sh, sl, columns).to_pylist()
        for sh in range(store.num_shards)
        for sl in checkpoints.shard_slices(store, sh)
    }
    return slices, store.index.table.drop_columns(["ingest_id"])


def test_a_file_read_in_many_chunks_is_written_as_from_one(tmp_path, monkeypatch):
    rows = [
        {
            "record_id": f"r{i:04d}",
            "subject_id": f"p{i // 3}" if i % 7 else None,
            "text": f"note {i}: {'x' * (i % 40)}",
            "team": f"t{i % 4}",
        }
        for i in range(300)
    ]
    path = tmp_path / "in.jsonl"
    write_jsonl(rows, path)
    placed = []
    for block in (None, 1024):
        if block is not None:
            monkeypatch.setattr(sources, "_READ_BLOCK", block)
        source = read_source(str(path))
        assert (source.table["text"].num_chunks > 10) is (block is not None)
        cfg = load_config(TINY, [f"store.uri={tmp_path / f's{block}'}"])
        store = Store.create(cfg.store.uri, cfg.sharding.num_shards, cfg.store.seed)
        (batch,) = prepare_batches(None, [source], cfg)  # a new store: nothing to clash with
        # The batch's text is the reader's buffers, not a copy of them.
        assert batch.table["text"].chunks[0].buffers()[2].address == source.table["text"].chunks[0].buffers()[2].address
        result = commit_batch(store, batch, cfg, 1)
        assert result.records == 300
        placed.append(_placed(cfg.store.uri))
    (one_slices, one_index), (many_slices, many_index) = placed
    assert len(one_slices) > 4
    assert many_slices == one_slices
    assert many_index.equals(one_index)


@pytest.mark.parametrize("field", ["record_id", "text"])
def test_problems_are_found_in_any_chunk(tmp_path, monkeypatch, field):
    monkeypatch.setattr(sources, "_READ_BLOCK", 512)
    rows = [{"record_id": f"r{i}", "text": f"note {i}"} for i in range(100)]
    rows[80][field] = "  "
    path = tmp_path / "in.jsonl"
    write_jsonl(rows, path)
    source = read_source(str(path))
    assert source.table[field].num_chunks > 3
    cfg = load_config(TINY, [f"store.uri={tmp_path / 's'}"])
    _, problems = ingestion.normalise(source, cfg)
    assert len(problems) == 1 and "line 81" in problems[0]
