"""The records' text, read into memory only (for the evidence, the fast path and a rectification's
old content): never written anywhere, never logged."""

from __future__ import annotations

import pyarrow as pa

from sisa.data.formats import FORMAT_COLUMN, Item, decode
from sisa.storage.store import Store


def row_slices(rows: pa.Table) -> list[tuple[int, int]]:
    """The (shard_id, slice_idx) of the slices that hold these index rows, in order."""
    return sorted(
        {(int(a), int(b)) for a, b in zip(rows["shard_id"].to_pylist(), rows["slice_idx"].to_pylist(), strict=True)}
    )


def read_texts(store: Store, rows: pa.Table) -> tuple[list[Item], list[str | None] | None]:
    """The records (a text record's str, or a prompt-completion/chat Example) and their prompt
    column when the data has one, read into memory only. The prompts are not None when some
    record is scored on its answer tokens alone: a text record with a `prompt` column, or any
    prompt-completion or chat record (scored on its completion / assistant turns)."""
    texts: list[Item] = []
    prompts: list[str | None] = []
    has_prompt = False
    wanted = set(rows["record_id"].to_pylist())
    for shard, sl in row_slices(rows):
        t = store.read_slice(shard, sl, include_forgetting=True)
        if t is None:
            continue
        has_prompt = has_prompt or "prompt" in t.column_names
        ps = t["prompt"].to_pylist() if "prompt" in t.column_names else [None] * t.num_rows
        kinds = t[FORMAT_COLUMN].to_pylist() if FORMAT_COLUMN in t.column_names else [None] * t.num_rows
        for rid, text, p, kind in zip(t["record_id"].to_pylist(), t["text"].to_pylist(), ps, kinds, strict=True):
            if rid in wanted:
                item = decode(kind, text)
                has_prompt = has_prompt or not isinstance(item, str)
                texts.append(item)
                prompts.append(p if isinstance(item, str) else None)
    return texts, (prompts if has_prompt else None)
