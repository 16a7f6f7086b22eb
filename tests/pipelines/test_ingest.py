"""`sisa ingest` and `sisa status` end to end: real files, real Parquet, a real store under tmp_path."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sisa.pipelines.cli import main
from sisa.pipelines.ingest import ingest_table
from sisa.storage.schemas import PROVENANCE_COLUMNS, RECORD_COLUMNS
from sisa.storage.store import Store

from sisa.config import load_config
from sisa.data.synthetic import write_jsonl
from sisa.lineage import checkpoints
from tests.helpers import REPO, TINY, run_cli, tree_digest

SISA = str(Path(sys.executable).parent / "sisa")
SLICE_SIZE = 16  # configs/tiny.yaml


# -- helpers ------------------------------------------------------------------------------------
def make_rows(n: int, start: int = 0, per_subject: int = 2) -> list[dict]:
    """Records with a subject, personal-looking text and two extra user columns."""
    return [
        {
            "record_id": f"r-{i:05d}",
            "subject_id": f"person-{i // per_subject:05d}",
            "text": f"Confidential note {i}: person {i // per_subject} called about invoice {i * 7919 % 10007}.",
            "team": ["sales", "support", "billing"][i % 3],
            "score": i % 11,
        }
        for i in range(start, start + n)
    ]


def data_parts(store: Path) -> dict[str, pa.Table]:
    return {str(p.relative_to(store)): pq.read_table(p) for p in sorted((store / "data").rglob("*.parquet"))}


def all_records(store: Path) -> pa.Table:
    return pa.concat_tables(data_parts(store).values(), promote_options="permissive")


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "s"


@pytest.fixture
def sisa(store):
    """Run the real CLI in-process: sisa(verb, *args) -> (exit code, stdout, stderr)."""

    def run(verb: str, *args: str, overrides: tuple[str, ...] = ()) -> tuple[int, str, str]:
        return run_cli(verb, *args, "--config", TINY, f"store.uri={store}", *overrides)

    return run


def status(sisa) -> dict:
    code, out, _ = sisa("status", "--json")
    assert code == 0
    return json.loads(out)


def slice_counts(st: dict) -> dict[tuple[int, int], int]:
    return {(sh["shard_id"], int(sl)): n for sh in st["shards"] for sl, n in sh["slices"].items()}


def assert_rejected(code: int, out: str, err: str, rows: list[dict], *fragments: str) -> None:
    assert code == 4, err
    assert "nothing was ingested" in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    for r in rows:  # never echo record text: it may be personal data
        text = r.get("text")
        if isinstance(text, str) and text:
            assert text not in err and text not in out


# -- formats ------------------------------------------------------------------------------------
def test_jsonl_ingest_writes_parts_with_provenance_and_status_counts(tmp_path, store, sisa):
    rows = make_rows(40)
    path = write_jsonl(rows, tmp_path / "people.jsonl")
    code, out, err = sisa("ingest", str(path))
    assert code == 0, err
    assert "ingested 40 record(s)" in out

    parts = data_parts(store)
    table = all_records(store)
    assert table.num_rows == 40
    assert table.column_names[: len(RECORD_COLUMNS)] == RECORD_COLUMNS
    assert {"team", "score"} <= set(table.column_names)  # the user's own columns are kept
    assert table.schema.field("score").type == pa.int64()
    st = status(sisa)
    (ingest,) = st["ingests"]
    by_id = {r["record_id"]: r for r in table.to_pylist()}
    for row in rows:
        rec = by_id[row["record_id"]]
        assert rec["text"] == row["text"] and rec["subject_id"] == row["subject_id"]
        assert rec["team"] == row["team"] and rec["score"] == row["score"]
        assert rec["source"] == "people.jsonl"
        assert rec["ingest_id"] == ingest["ingest_id"]
        assert rec["content_sha256"] == hashlib.sha256(row["text"].encode()).hexdigest()
        assert rec["ingested_at"] is not None
    assert all(table[c].null_count == 0 for c in PROVENANCE_COLUMNS)
    assert table.schema.field("ingested_at").type == pa.timestamp("ms", tz="UTC")

    # Each part lives in the folder of its (shard, slice); a subject's records share a shard.
    for rel, part in parts.items():
        shard = int(rel.split("shard=")[1].split("/")[0])
        sl = int(rel.split("slice=")[1].split("/")[0])
        assert set(part["shard_id"].to_pylist()) == {shard}
        assert set(part["slice_idx"].to_pylist()) == {sl}
        assert part.num_rows <= SLICE_SIZE
    shards_of = defaultdict(set)
    for rec in table.to_pylist():
        shards_of[rec["subject_id"]].add(rec["shard_id"])
    assert all(len(s) == 1 for s in shards_of.values())

    # status --json: counts per shard and slice, matching the files.
    from_files = defaultdict(int)
    for rec in table.to_pylist():
        from_files[(rec["shard_id"], rec["slice_idx"])] += 1
    assert st["records"] == 40 and st["num_shards"] == 2
    assert slice_counts(st) == dict(from_files)
    assert [sh["records"] for sh in st["shards"]] == [
        sum(n for (s, _), n in from_files.items() if s == i) for i in range(2)
    ]
    assert ingest["records"] == 40 and ingest["source"] == "people.jsonl"
    assert ingest["input_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert st["size_bytes"] > 0

    code, out, _ = sisa("status")
    assert code == 0 and "records per shard and slice" in out and ingest["ingest_id"] in out


def test_cli_as_a_subprocess(tmp_path, store, sisa):
    rows = make_rows(30)
    path = write_jsonl(rows, tmp_path / "people.jsonl")
    done = subprocess.run(
        [SISA, "ingest", str(path), "--json", "--config", TINY, f"store.uri={store}"],
        capture_output=True,
        text=True,
        # The installed entry point, running this checkout's code (not wherever the package
        # was installed from in editable mode).
        env={
            **os.environ,
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        },
    )
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert result["records"] == 30 and result["noop"] is False
    assert sum(result["shards"].values()) == 30
    st = status(sisa)  # what the installed binary wrote, read back through the API in this process
    assert st["records"] == 30
    assert sum(slice_counts(st).values()) == 30
    assert all(n <= SLICE_SIZE for n in slice_counts(st).values())
    # The same subjects land in the same shards here as in that process (hash seed does not matter).
    by_subject = {r["subject_id"]: r["shard_id"] for r in all_records(store).to_pylist()}
    cfg = load_config(TINY, [f"store.uri={store}"])
    from sisa.data.sharding import assign_shards

    expected = assign_shards(cfg.store.seed, list(by_subject), list(by_subject), cfg.sharding.num_shards)
    assert list(by_subject.values()) == expected.tolist()


def test_csv_with_field_mapping_flags(tmp_path, store, sisa):
    path = tmp_path / "crm.csv"
    rows = make_rows(20)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "body", "person", "note"])
        for i, r in enumerate(rows):
            w.writerow([f"00{i}", r["text"], r["subject_id"], "multi\nline" if i == 3 else f"n{i}"])
    code, out, err = sisa("ingest", str(path), "--id-field", "id", "--text-field", "body", "--subject-field", "person")
    assert code == 0, err
    table = all_records(store)
    assert table.num_rows == 20
    assert "note" in table.column_names
    assert not {"id", "body", "person"} & set(table.column_names)  # mapped, not duplicated
    by_id = {r["record_id"]: r for r in table.to_pylist()}
    assert "000" in by_id and "0019" in by_id  # ids are text: leading zeros survive
    assert by_id["003"]["note"] == "multi\nline"
    assert by_id["005"]["text"] == rows[5]["text"] and by_id["005"]["subject_id"] == rows[5]["subject_id"]
    assert by_id["005"]["source"] == "crm.csv"


def test_csv_errors_name_the_line(tmp_path, store, sisa):
    path = tmp_path / "crm.csv"
    path.write_text('record_id,text\na,"first\nspans two lines"\nb,\nc,Selma owes 300\n')
    code, out, err = sisa("ingest", str(path))
    assert_rejected(code, out, err, [{"text": "Selma owes 300"}], "line 4", "`text`")
    assert not store.exists()
    path.write_text("record_id,text\na,fine\nb,Selma owes 300,extra\n")
    code, out, err = sisa("ingest", str(path))
    assert code == 4 and "line 3" in err and "Selma" not in err


def test_parquet_file(tmp_path, store, sisa):
    rows = make_rows(25)
    path = tmp_path / "export.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    code, _, err = sisa("ingest", str(path))
    assert code == 0, err
    table = all_records(store)
    assert sorted(table["record_id"].to_pylist()) == [r["record_id"] for r in rows]
    assert set(table["source"].to_pylist()) == {"export.parquet"}
    assert table.schema.field("score").type == pa.int64()


def test_hf_dataset_folder(tmp_path, store, sisa):
    rows = make_rows(18)
    folder = tmp_path / "tickets"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    code, _, err = sisa("ingest", str(folder))
    assert code == 0, err
    table = all_records(store)
    assert sorted(table["record_id"].to_pylist()) == [r["record_id"] for r in rows]
    assert set(table["source"].to_pylist()) == {"tickets"}
    assert "team" in table.column_names


def test_python_api_with_a_table_and_a_dataset(store):
    cfg = load_config(TINY, [f"store.uri={store}"])
    first = ingest_table(cfg, pa.Table.from_pylist(make_rows(20)), name="crm-export")
    assert first.records == 20 and not first.noop and first.source == "crm-export"
    # A shuffled, selected Dataset: exactly the rows it shows are ingested.
    ds = datasets.Dataset.from_list(make_rows(30, start=20)).shuffle(seed=0).select(range(12))
    second = ingest_table(cfg, ds, name="tickets")
    assert second.records == 12
    table = all_records(store)
    assert table.num_rows == 32
    assert sorted(table.filter(pa.compute.equal(table["source"], "tickets"))["record_id"].to_pylist()) == sorted(
        ds["record_id"]
    )
    again = ingest_table(cfg, pa.Table.from_pylist(make_rows(20)), name="crm-export")
    assert again.noop and again.records == 0 and again.skipped == 20


# -- validation: nothing written, every offender named, no text echoed -------------------------
def test_one_bad_line_ingests_nothing_and_leaves_the_store_byte_identical(tmp_path, store, sisa):
    assert sisa("ingest", str(write_jsonl(make_rows(20), tmp_path / "first.jsonl")))[0] == 0
    before = tree_digest(store)
    rows = make_rows(10, start=100)
    lines = [json.dumps(r) for r in rows]
    lines[5] = lines[5][:-1]  # line 6 loses its closing brace
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = sisa("ingest", str(path))
    assert code == 4
    assert "line 6" in err and "1 malformed line(s)" in err and "nothing was ingested" in err
    assert all(r["text"] not in err for r in rows)
    assert tree_digest(store) == before
    assert status(sisa)["records"] == 20


def test_a_rejected_first_ingest_creates_no_store(tmp_path, store, sisa):
    rows = make_rows(5)
    rows[2]["record_id"] = ""
    code, out, err = sisa("ingest", str(write_jsonl(rows, tmp_path / "x.jsonl")))
    assert_rejected(code, out, err, rows, "line 3")
    assert not store.exists()


def test_line_numbers_count_blank_lines(tmp_path, store, sisa):
    rows = make_rows(4)
    del rows[3]["text"]
    body = [json.dumps(rows[0]), "", json.dumps(rows[1]), "   ", json.dumps(rows[2]), json.dumps(rows[3])]
    path = tmp_path / "gaps.jsonl"
    path.write_text("\n".join(body) + "\n")
    code, out, err = sisa("ingest", str(path))
    assert_rejected(code, out, err, rows, "line 6")


def _case_missing_id(rows):
    del rows[1]["record_id"]
    return ["missing or empty `record_id`", "line 2"]


def _case_empty_id(rows):
    rows[2]["record_id"] = "  "
    return ["missing or empty `record_id`", "line 3"]


def _case_null_id(rows):
    rows[3]["record_id"] = None
    return ["missing or empty `record_id`", "line 4"]


def _case_duplicate_within(rows):
    rows[4]["record_id"] = rows[1]["record_id"]
    return ["duplicate id(s) within the file", rows[1]["record_id"]]


def _case_missing_text(rows):
    del rows[2]["text"]
    return ["missing or empty `text`", "line 3"]


def _case_empty_text(rows):
    rows[5]["text"] = ""
    return ["missing or empty `text`", "line 6"]


def _case_mixed_types(rows):
    rows[3]["text"] = ["a", "list"]
    return ["mixed types", "`text`", "line 4"]


def _case_number_text(rows):
    for r in rows:
        r["text"] = 5
    return ["`text`", "should hold strings"]


@pytest.mark.parametrize(
    "case",
    [
        _case_missing_id,
        _case_empty_id,
        _case_null_id,
        _case_duplicate_within,
        _case_missing_text,
        _case_empty_text,
        _case_mixed_types,
        _case_number_text,
    ],
    ids=lambda f: f.__name__.removeprefix("_case_"),
)
def test_each_bad_input_is_named_and_changes_nothing(tmp_path, store, sisa, case):
    assert sisa("ingest", str(write_jsonl(make_rows(10, start=500), tmp_path / "first.jsonl")))[0] == 0
    before = tree_digest(store)
    rows = make_rows(8)
    original = [dict(r) for r in rows]
    fragments = case(rows)
    code, out, err = sisa("ingest", str(write_jsonl(rows, tmp_path / "bad.jsonl")))
    assert_rejected(code, out, err, original, *fragments)
    assert tree_digest(store) == before


def test_every_problem_is_reported_at_once(tmp_path, store, sisa):
    rows = make_rows(30)
    for i in range(0, 25):
        rows[i]["record_id"] = ""  # 25 lines: the first 20 are listed, then a count
    del rows[26]["text"]
    rows[28]["record_id"] = rows[27]["record_id"]
    code, out, err = sisa("ingest", str(write_jsonl(rows, tmp_path / "bad.jsonl")))
    assert_rejected(
        code,
        out,
        err,
        make_rows(30),
        "at 25 line(s)",
        "line 20 (and 5 more)",
        "line 27",
        f"1 duplicate id(s) within the file: {rows[27]['record_id']}",
    )
    assert "line 21" not in err


def test_duplicate_against_the_store_with_different_text(tmp_path, store, sisa):
    assert sisa("ingest", str(write_jsonl(make_rows(10), tmp_path / "a.jsonl")))[0] == 0
    before = tree_digest(store)
    rows = make_rows(10, start=5)  # r-00005..r-00009 exist already
    rows[2]["text"] = "Edited: the customer Ingrid Holm asked for a refund."  # r-00007
    code, out, err = sisa("ingest", str(write_jsonl(rows, tmp_path / "b.jsonl")))
    assert_rejected(code, out, err, rows, "1 id(s) already in the store with different text", "r-00007")
    assert "r-00006" not in err  # identical re-sends are not conflicts
    assert tree_digest(store) == before


def test_duplicates_across_inputs_of_one_call(tmp_path, store, sisa):
    a = write_jsonl(make_rows(5), tmp_path / "a.jsonl")
    b = write_jsonl(make_rows(5, start=4), tmp_path / "b.jsonl")
    code, out, err = sisa("ingest", str(a), str(b))
    assert code == 4 and "r-00004 (a.jsonl and b.jsonl)" in err
    assert not store.exists()


def test_unknown_and_missing_inputs(tmp_path, store, sisa):
    (tmp_path / "x.txt").write_text("hello")
    code, _, err = sisa("ingest", str(tmp_path / "x.txt"))
    assert code == 4 and "unknown format" in err
    code, _, err = sisa("ingest", str(tmp_path / "nope.jsonl"))
    assert code == 4 and "does not exist" in err
    assert not store.exists()


def test_a_config_that_disagrees_with_the_store_is_refused(tmp_path, store, sisa):
    assert sisa("ingest", str(write_jsonl(make_rows(4), tmp_path / "a.jsonl")))[0] == 0
    code, _, err = sisa(
        "ingest", str(write_jsonl(make_rows(4, 10), tmp_path / "b.jsonl")), overrides=("sharding.num_shards=3",)
    )
    assert code == 2 and "sharding.num_shards" in err


def test_a_locked_store_fails_naming_the_holder(tmp_path, store, sisa):
    assert sisa("ingest", str(write_jsonl(make_rows(4), tmp_path / "a.jsonl")))[0] == 0
    import socket

    (store / "LOCK").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": "train"}))
    code, _, err = sisa(
        "ingest", str(write_jsonl(make_rows(4, 10), tmp_path / "b.jsonl")), overrides=("store.lock_timeout_s=0",)
    )
    assert code == 3 and f"PID {os.getpid()}" in err and "train" in err
    (store / "LOCK").unlink()


# -- re-ingest and append ------------------------------------------------------------------------
def test_the_same_file_twice_is_a_noop(tmp_path, store, sisa):
    path = write_jsonl(make_rows(40), tmp_path / "people.jsonl")
    assert sisa("ingest", str(path))[0] == 0
    before = tree_digest(store)
    code, out, err = sisa("ingest", str(path))
    assert code == 0, err
    assert "no-op" in out and "40 record(s) already in the store" in out
    assert tree_digest(store) == before
    code, out, _ = sisa("ingest", str(path), "--json")
    assert code == 0 and json.loads(out)[0]["noop"] is True
    assert len(status(sisa)["ingests"]) == 1


def test_overlapping_file_ingests_only_the_new_records(tmp_path, store, sisa):
    assert sisa("ingest", str(write_jsonl(make_rows(20), tmp_path / "a.jsonl")))[0] == 0
    code, out, err = sisa("ingest", str(write_jsonl(make_rows(20, start=10), tmp_path / "b.jsonl")))
    assert code == 0, err
    assert "ingested 10 record(s)" in out and "10 already present" in out
    st = status(sisa)
    assert st["records"] == 30
    assert [i["records"] for i in st["ingests"]] == [20, 10]
    assert [i["skipped"] for i in st["ingests"]] == [0, 10]


def test_a_second_ingest_appends_slices_and_leaves_existing_parts_alone(tmp_path, store, sisa):
    a, b = make_rows(40), make_rows(50, start=40)
    assert sisa("ingest", str(write_jsonl(a, tmp_path / "a.jsonl")))[0] == 0
    first_parts = {k: v for k, v in tree_digest(store).items() if k.startswith("data/")}
    first_counts = slice_counts(status(sisa))
    assert sisa("ingest", str(write_jsonl(b, tmp_path / "b.jsonl")))[0] == 0
    after = tree_digest(store)
    assert {k: after[k] for k in first_parts} == first_parts  # not one byte of the old parts moved
    new_parts = [k for k in after if k.startswith("data/") and k.endswith(".parquet") and k not in first_parts]
    assert new_parts and all("/part-000002-" in k for k in new_parts)

    counts = slice_counts(status(sisa))
    assert sum(counts.values()) == 90
    assert all(n <= SLICE_SIZE for n in counts.values())
    assert len(counts) > len(first_counts)
    for shard in range(2):
        old_slices = sorted(sl for (s, sl) in first_counts if s == shard)
        new_slices = sorted(sl for (s, sl) in counts if s == shard)
        assert new_slices == list(range(len(new_slices)))  # no gaps
        # Only the last old slice (if it had room) gains records; earlier ones are untouched.
        for sl in old_slices[:-1]:
            assert counts[(shard, sl)] == first_counts[(shard, sl)] == SLICE_SIZE

    # Arrival order within a slice: the first ingest's records come before the second's.
    s = Store.open(str(store))
    a_ids = {r["record_id"] for r in a}
    for shard in range(2):
        for sl in checkpoints.shard_slices(s, shard):
            ids = s.read_slice(shard, sl, columns=["record_id"])["record_id"].to_pylist()
            flags = [i in a_ids for i in ids]
            assert flags == sorted(flags, reverse=True)


def test_ingesting_in_two_batches_places_records_as_one_batch_would(tmp_path, capsys):
    rows = make_rows(70)
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["ingest", str(write_jsonl(rows, tmp_path / "all.jsonl")), "--config", TINY, f"store.uri={one}"]) == 0
    assert (
        main(["ingest", str(write_jsonl(rows[:23], tmp_path / "p1.jsonl")), "--config", TINY, f"store.uri={two}"]) == 0
    )
    assert (
        main(["ingest", str(write_jsonl(rows[23:], tmp_path / "p2.jsonl")), "--config", TINY, f"store.uri={two}"]) == 0
    )
    capsys.readouterr()

    def placement(path: Path) -> dict:
        t = all_records(path)
        return {
            r: (s, sl)
            for r, s, sl in zip(
                t["record_id"].to_pylist(), t["shard_id"].to_pylist(), t["slice_idx"].to_pylist(), strict=True
            )
        }

    assert placement(one) == placement(two)
