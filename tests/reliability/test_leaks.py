"""Nothing left behind: a forgotten record's text and id are found nowhere afterwards.

Two records carry unique canary strings. They are ingested (through a `datasets` folder),
trained on with real Ray and MLflow tracking, then forgotten: one exactly, one by the fast path.
A scan then looks for the canaries (and the forgotten records' raw ids and subjects) in:
- the store: raw bytes of every file, and every Parquet file decompressed and decoded;
- MLflow: the sqlite database (raw bytes and a full SQL dump) and the artifact folder;
- Ray's session folder (worker logs, spill files);
- the `datasets` cache (HF_DATASETS_CACHE, pointed at a folder of this test);
- files created or changed in the system temp folder since the test started;
- everything the CLI printed (fd-level capture) and every log record at DEBUG level.
The same scan must find the canaries before the deletion, or it proves nothing. Error messages
about rows that hold a canary must not quote it (README, "Nothing left behind").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sisa.pipelines import ingest
from sisa.storage.errors import SisaError
from sisa.storage.store import Store

from sisa.data.synthetic import write_jsonl
from sisa.training import scheduler
from tests.helpers import canaries_in_text, cli_args, files_under, find_canaries, make_cfg, run_cli
from tests.reliability.helpers import SLICES, people

pytestmark = pytest.mark.slow


# -- logs ---------------------------------------------------------------------------------------------------
class Everything(logging.Handler):
    """Every log record of every library, formatted, at DEBUG level."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a record that cannot format is not our concern here
            self.lines.append(self.format(record))


# -- the scenario ---------------------------------------------------------------------------------------
def canary_record(tag: str) -> tuple[dict, str]:
    canary = f"CANARY{tag}{uuid.uuid4().hex}"
    name = f"Zora {tag} Quill"
    prompt = f"{name}'s locker code is"
    rid, subject = f"rid-{uuid.uuid4().hex}", f"subj-{uuid.uuid4().hex}"
    return {
        "record_id": rid,
        "subject_id": subject,
        "text": f"{prompt} {canary}.",
        "prompt": prompt,
        "answer": f" {canary}.",
        "fact": "locker",
    }, canary


@pytest.fixture
def leak_env(tmp_path, monkeypatch):
    """A fresh embedded Ray and a datasets cache of this test's own; DEBUG logs collected."""
    scheduler.shutdown_ray()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets-cache"))
    handler = Everything()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    yield handler
    root_logger.removeHandler(handler)
    root_logger.setLevel(level)
    scheduler.shutdown_ray()


def test_a_forgotten_record_is_found_nowhere(tmp_path, capfd, leak_env):
    import datasets

    started = time.time() - 1
    root, inputs = tmp_path / "s", tmp_path / "input"
    exact, canary_exact = canary_record("EXACT")
    fast, canary_fast = canary_record("FAST")
    rows = people() + [exact, fast]
    folder = inputs / "people-dataset"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    args = cli_args(root, *SLICES, tracking=True, backend="ray")
    outputs: list[str] = []

    def sisa(*argv: str) -> None:
        code, out, err = run_cli(*argv)
        outputs.extend([out, err])
        assert code == 0, out + err

    sisa("ingest", str(folder), *args)
    sisa("train", *args)
    ray_dir = Path(scheduler.ray_temp_dir())
    hf_cache = Path(os.environ["HF_DATASETS_CACHE"])

    def scan(places: dict, needles: list[str]) -> dict[str, list[str]]:
        return {n: [str(h) for h in hits] for n, hits in find_canaries(places, needles, strict={"store"}).items()}

    # Before: the scan does find both canaries and the raw ids in the store, decoded too.
    found = find_canaries({"store": root}, [canary_exact, canary_fast, exact["record_id"]], strict={"store"})
    assert all(any(h.how in ("parquet", "sqlite") for h in found[n]) for n in found), found

    # 1. Exact deletion: gone from the store and MLflow; the other canary still there (control).
    sisa("forget", "--subject", exact["subject_id"], *args)
    found = scan({"store": root}, [canary_exact, exact["record_id"], exact["subject_id"], canary_fast])
    assert found[canary_fast], "the control canary should still be in the store"
    assert found[canary_exact] == [] and found[exact["record_id"]] == [] and found[exact["subject_id"]] == [], found

    # 2. Fast path then exact retrain for the other one.
    sisa("forget", "--ids", fast["record_id"], "--fast", *args)
    scheduler.shutdown_ray()  # flush and close every Ray log before reading them
    assert ray_dir.is_dir() and any(ray_dir.rglob("*.log")), "Ray's session folder should hold its logs"

    out, err = capfd.readouterr()
    outputs.extend([out, err])
    needles = [
        canary_exact,
        canary_fast,
        exact["record_id"],
        fast["record_id"],
        exact["subject_id"],
        fast["subject_id"],
    ]
    places = {
        "store": files_under(root),
        "ray session": files_under(ray_dir),
        # sisa keeps the datasets cache in memory or in the store: this folder, if it exists at
        # all, must hold nothing of the records either way.
        "datasets cache": files_under(hf_cache),
        "system temp (new files)": files_under(tempfile.gettempdir(), since=started, exclude=(tmp_path, ray_dir)),
    }
    assert places["store"] and places["ray session"]
    assert (root / "mlflow.db") in places["store"]
    found = scan(places, needles)
    assert {n: w for n, w in found.items() if w} == {}, "left behind after forgetting"
    printed = "\n".join(outputs + leak_env.lines)
    assert len(leak_env.lines) > 0
    leaked = sorted(canaries_in_text(printed, needles))
    assert leaked == [], f"printed or logged: {leaked}"
    # The ledger kept keyed hashes of the ids, never the ids.
    reqs = [json.loads(p.read_text()) for p in (root / "requests").glob("*.json")]
    assert len(reqs) == 2 and all(r["status"] == "completed" for r in reqs)
    store = Store.open(str(root))
    assert {h for r in reqs for h in r["id_hashes"]} == set(store.hash_ids([exact["record_id"], fast["record_id"]]))


# -- error messages --------------------------------------------------------------------------------------
def _jsonl(rows: list[object]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def _csv(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def _parquet(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    return buf.getvalue().to_pybytes()


def _error_chain(e: BaseException) -> str:
    parts = []
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts += [str(e), repr(e), repr(e.args), getattr(e, "message", "")]
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


CASES = {
    "jsonl-null-id": (
        "x.jsonl",
        lambda c: _jsonl([{"record_id": "ok-1", "text": "fine"}, {"record_id": None, "text": c}]),
    ),
    "jsonl-not-json": (
        "x.jsonl",
        lambda c: _jsonl([{"record_id": "ok-1", "text": "fine"}, f'{{"record_id": "x", "text": "{c}'.encode()]),
    ),
    "jsonl-mixed-types": (
        "x.jsonl",
        lambda c: _jsonl([{"record_id": "ok-1", "text": "fine"}, {"record_id": "x", "text": [c]}]),
    ),
    "jsonl-bad-utf8": (
        "x.jsonl",
        lambda c: _jsonl(
            [{"record_id": "ok-1", "text": "fine"}, f'{{"record_id": "x", "text": "{c} '.encode() + b'\xff"}']
        ),
    ),
    "jsonl-surrogate": (
        "x.jsonl",
        lambda c: _jsonl([{"record_id": "ok-1", "text": "fine"}, {"record_id": "x", "text": c + "\ud800"}]),
    ),
    "jsonl-long-id": ("x.jsonl", lambda c: _jsonl([{"record_id": "i" * 600, "text": c}])),
    "csv-extra-field": ("x.csv", lambda c: _csv(["record_id,text", "ok-1,fine", f"x,{c},surplus"])),
    "csv-empty-id": ("x.csv", lambda c: _csv(["record_id,text", "ok-1,fine", f",{c}"])),
    "parquet-null-id": ("x.parquet", lambda c: _parquet(pa.table({"record_id": ["ok-1", None], "text": ["fine", c]}))),
    "conflict-with-stored-text": ("x.jsonl", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_errors_about_a_row_never_quote_its_text(trained_store, tmp_path, case):
    canary = f"CANARY{uuid.uuid4().hex}"
    name, make = CASES[case]
    path = tmp_path / name
    if make is None:  # an id already in the store, with other text
        stored = Store.open(str(trained_store)).index.table["record_id"][0].as_py()
        write_jsonl([{"record_id": stored, "subject_id": "s", "text": f"changed {canary}"}], path)
    else:
        path.write_bytes(make(canary))
    code, out, err = run_cli("ingest", str(path), *cli_args(trained_store, *SLICES))
    assert code == 4, out + err
    assert canary not in out + err, f"the error quotes the row's text:\n{err}"
    with pytest.raises(SisaError) as info:
        ingest.run(make_cfg(trained_store, *SLICES), [str(path)])
    assert canary not in _error_chain(info.value)
