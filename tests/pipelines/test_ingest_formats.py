"""Ingest of prompt-completion and chat records (issue 15 §1): JSONL, Parquet and HF datasets;
the whole batch validated first, bad rows named, nothing written; hashes, subjects, deletion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sisa.storage.store import Store

from sisa.data import formats
from sisa.data.synthetic import write_jsonl
from tests.helpers import cli_args, run_cli, tree_digest


def chat_rows(n: int = 6) -> list[dict]:
    return [
        {
            "record_id": f"c-{i:03d}",
            "subject_id": f"person-{i // 2:03d}",
            "messages": [
                {"role": "system", "content": "You answer questions about customers."},
                {"role": "user", "content": f"Where does customer {i} live?"},
                {"role": "assistant", "content": f"Customer {i} lives in Town{i}."},
            ],
        }
        for i in range(n)
    ]


def pair_rows(n: int = 6) -> list[dict]:
    return [
        {
            "record_id": f"p-{i:03d}",
            "subject_id": f"person-{i // 2:03d}",
            "prompt": f"Customer {i} works as a",
            "completion": f" welder{i}.",
        }
        for i in range(n)
    ]


def write_as(kind: str, tmp_path: Path, rows: list[dict]) -> Path:
    if kind == "jsonl":
        return write_jsonl(rows, tmp_path / "in.jsonl")
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
        return tmp_path / "in.parquet"
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    return tmp_path / "ds"


def stored(root: Path) -> pa.Table:
    store = Store.open(str(root))
    parts = [store.read_slice(sh, sl) for sh in range(store.num_shards) for sl in range(4)]
    return pa.concat_tables([p for p in parts if p is not None], promote_options="permissive").sort_by("record_id")


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "dataset"])
@pytest.mark.parametrize("make", [chat_rows, pair_rows], ids=["chat", "prompt-completion"])
def test_structured_records_ingest_from_every_input(tmp_path, kind, make):
    rows = make()
    path = write_as(kind, tmp_path, rows)
    root = tmp_path / "s"
    code, out, err = run_cli("ingest", str(path), *cli_args(root))
    assert code == 0, err
    table = stored(root)
    fmt = formats.CHAT if "messages" in rows[0] else formats.PROMPT_COMPLETION
    assert set(table["record_format"].to_pylist()) == {fmt}
    assert "messages" not in table.column_names and "completion" not in table.column_names
    for row, text, sha in zip(rows, table["text"].to_pylist(), table["content_sha256"].to_pylist(), strict=True):
        item = formats.decode(fmt, text)
        assert isinstance(item, formats.Example)
        if fmt == formats.CHAT:
            assert item.messages == tuple((m["role"], m["content"]) for m in row["messages"])
        else:
            assert (item.prompt, item.completion) == (row["prompt"], row["completion"])
        assert sha == hashlib.sha256(text.encode()).hexdigest()
    # Subject sharding: one person's records share a shard.
    by_subject: dict[str, set[int]] = {}
    for s, sh in zip(table["subject_id"].to_pylist(), table["shard_id"].to_pylist(), strict=True):
        by_subject.setdefault(s, set()).add(sh)
    assert all(len(v) == 1 for v in by_subject.values())
    # The same records again: a no-op, recognised by content hash.
    code, out, _ = run_cli("ingest", str(path), *cli_args(root))
    assert code == 0 and "nothing new" in out
    # The same id with another answer is a conflict.
    changed = [dict(r) for r in rows]
    if fmt == formats.CHAT:
        changed[0]["messages"] = [*changed[0]["messages"][:2], {"role": "assistant", "content": "Somewhere else."}]
    else:
        changed[0]["completion"] = " baker."
    code, _, err = run_cli("ingest", str(write_jsonl(changed, tmp_path / "changed.jsonl")), *cli_args(root))
    assert code == 4 and "different text" in err and changed[0]["record_id"] in err


def test_malformed_conversations_are_refused_naming_their_lines_and_nothing_changes(tmp_path):
    root = tmp_path / "s"
    assert run_cli("ingest", str(write_jsonl(chat_rows(4), tmp_path / "ok.jsonl")), *cli_args(root))[0] == 0
    before = tree_digest(root)
    rows = chat_rows(9)[4:]  # lines 1..5
    rows[0]["messages"][1]["role"] = "customer"  # line 1: unknown role
    rows[1]["messages"][2]["content"] = "   "  # line 2: empty content
    rows[2]["messages"] = rows[2]["messages"][:2]  # line 3: no assistant turn
    rows[4]["messages"] = []  # line 5: empty conversation
    secret = rows[2]["messages"][1]["content"]
    code, out, err = run_cli("ingest", str(write_jsonl(rows, tmp_path / "bad.jsonl")), *cli_args(root))
    assert code == 4
    assert "1 chat record(s) at line 1: turn 2 has an unknown role 'customer'" in err
    assert "1 chat record(s) at line 2: turn 3 has empty content" in err
    assert "1 chat record(s) at line 3: no assistant turn" in err
    assert "1 chat record(s) at line 5: not a non-empty list of turns" in err and "line 4" not in err
    assert secret not in err and "Town" not in err and "Customer" not in err
    assert tree_digest(root) == before


def test_wrong_types_and_mixed_columns_are_refused(tmp_path):
    root = tmp_path / "s"
    rows = pair_rows(3)
    rows[1]["completion"] = ""
    rows[2]["prompt"] = None
    code, _, err = run_cli("ingest", str(write_jsonl(rows, tmp_path / "bad.jsonl")), *cli_args(root))
    assert (
        code == 4
        and "prompt-completion record(s) at line 2: empty completion" in err
        and "at line 3: missing prompt" in err
    )
    assert not root.exists()
    # A message whose content is a number cannot even form one column: the reader names the lines.
    rows = chat_rows(3)
    rows[1]["messages"][1]["content"] = 42
    code, _, err = run_cli("ingest", str(write_jsonl(rows, tmp_path / "types.jsonl")), *cli_args(root))
    assert code == 4 and "line 2" in err
    # messages as a string (JSON in a column) is a wrong type, per row.
    rows = [{"record_id": "x", "messages": "[]"}]
    code, _, err = run_cli("ingest", str(write_jsonl(rows, tmp_path / "str.jsonl")), *cli_args(root))
    assert code == 4 and "not a non-empty list of turns" in err
    # Two formats in one file is ambiguous until ingest.format says which.
    rows = [{**r, "text": "plain"} for r in pair_rows(2)]
    code, _, err = run_cli("ingest", str(write_jsonl(rows, tmp_path / "both.jsonl")), *cli_args(root))
    assert code == 4 and "more than one record format" in err
    code, _, err = run_cli("ingest", str(tmp_path / "both.jsonl"), *cli_args(root, "ingest.format=text"))
    assert code == 0, err
    assert set(stored(root)["record_format"].to_pylist()) == {"text"}


def test_a_text_record_with_a_prompt_column_stays_text(tmp_path):
    root = tmp_path / "s"
    rows = [{"record_id": "t1", "text": "Ada works as a pilot.", "prompt": "Ada works as a"}]
    assert run_cli("ingest", str(write_jsonl(rows, tmp_path / "t.jsonl")), *cli_args(root))[0] == 0
    t = stored(root)
    assert t["record_format"].to_pylist() == ["text"] and t["text"].to_pylist() == ["Ada works as a pilot."]
    assert t["prompt"].to_pylist() == ["Ada works as a"]
