"""Nothing left behind (DESIGN.md contract 3): the bug we fear most.

A unique canary string is planted in one record's text, a second one in that record's own
metadata column; the record also has a unique id and subject. The store is trained with real
MLflow tracking, then the record is forgotten (exactly on Ray, and with the --fast path). Before
the forget the scan must find the canary (so the scan can fail); after it, nothing may hold any
of the four strings: the raw bytes of every file under the store, every value of every column of
every Parquet file, every JSON/text file, every row of every table of the MLflow sqlite database,
every MLflow artifact, the files created in the system temp dir (and Ray's session dir) during
the test, and everything the CLI printed.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import sqlite3
import tempfile
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sisa import scheduler
from sisa.synthetic import make_people, write_jsonl
from storage import ledgers
from storage.store import Store
from tests.helpers import cli_args, run_cli

CHUNK = 1 << 24
HARNESS = ("bash_jobs", "bash_tool_")  # the machinery running this session, not sisa's files


# -- scanning -------------------------------------------------------------------------------------------
def _hits(text: bytes | str, needles: dict[str, bytes]) -> set[str]:
    data = (text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text).lower()
    return {name for name, needle in needles.items() if needle in data}


def _scan_raw(path: Path, needles: dict[str, bytes]) -> set[str]:
    """The file's bytes, read in overlapping chunks; gzip members are decompressed too."""
    found: set[str] = set()
    overlap = max(len(n) for n in needles.values())
    tail = b""
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        while chunk := f.read(CHUNK):
            found |= _hits(tail + chunk, needles)
            tail = chunk[-overlap:]
    if head == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            found |= _hits(gzip.decompress(path.read_bytes()), needles)
    return found


def _scan_parquet(path: Path, needles: dict[str, bytes]) -> set[str]:
    """Every value of every column (decompressed), the schema metadata and the column statistics."""
    pf = pq.ParquetFile(path)
    found: set[str] = set()
    table = pf.read()
    for column in table.columns:
        found |= _hits("\n".join(str(v) for v in column.to_pylist()), needles)
    found |= _hits(str(table.schema.metadata), needles)
    meta = pf.metadata
    for i in range(meta.num_row_groups):
        for j in range(meta.num_columns):
            stats = meta.row_group(i).column(j).statistics
            if stats is not None and stats.has_min_max:
                found |= _hits(f"{stats.min}\n{stats.max}", needles)
    return found


def _scan_text(path: Path, needles: dict[str, bytes]) -> set[str]:
    """JSON decoded (so a \\u-escaped copy counts) and any text file as text."""
    text = path.read_bytes().decode("utf-8", "replace")
    found = _hits(text, needles)
    if path.suffix == ".json":
        with contextlib.suppress(ValueError):
            found |= _hits(json.dumps(json.loads(text), ensure_ascii=False), needles)
    return found


def _scan_sqlite(path: Path, needles: dict[str, bytes]) -> set[str]:
    """Every row of every table, every column."""
    found: set[str] = set()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert tables, f"{path} has no tables"
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if value is not None:
                        found |= _hits(value if isinstance(value, bytes) else str(value), needles)
    finally:
        con.close()
    return found


def scan_tree(root: Path, needles: dict[str, bytes], files: list[Path] | None = None) -> dict[str, list[str]]:
    """needle → places it was found under `root` (or in `files`), each as `how:path`."""
    if files is None:
        files = [Path(d) / n for d, _, names in os.walk(root) for n in names]
    out: dict[str, list[str]] = {}

    def add(found: set[str], how: str, path: Path) -> None:
        for name in found:
            out.setdefault(name, []).append(f"{how}:{path}")

    for path in files:
        try:
            if not path.is_file():
                continue
            add(_scan_raw(path, needles), "bytes", path)
            with open(path, "rb") as f:
                head = f.read(16)
            if head.startswith(b"PAR1"):
                add(_scan_parquet(path, needles), "parquet", path)
            elif head.startswith(b"SQLite format 3"):
                add(_scan_sqlite(path, needles), "sqlite", path)
            elif path.suffix in (".json", ".jsonl", ".txt", ".log", ".yaml", ".yml", ".csv", ".md", ".out", ".err", ""):
                add(_scan_text(path, needles), "text", path)
        except (FileNotFoundError, PermissionError, IsADirectoryError):
            continue  # a temp file another process removed meanwhile, a socket, ...
    return out


def temp_files() -> dict[str, int]:
    """Regular files under the system temp dir with their mtime (harness folders left out)."""
    out = {}
    for d, dirs, names in os.walk(tempfile.gettempdir()):
        dirs[:] = [x for x in dirs if not x.startswith(HARNESS)]
        for n in names:
            p = os.path.join(d, n)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if os.path.isfile(p) and not os.path.islink(p):
                out[p] = st.st_mtime_ns
    return out


def new_temp_files(before: dict[str, int], exclude: Path) -> list[Path]:
    """Files created or rewritten in the temp dir (and Ray's session dir) since `before`."""
    now = temp_files()
    ray_dir = scheduler.ray_temp_dir()
    if ray_dir and os.path.isdir(ray_dir):
        for d, _, names in os.walk(ray_dir):
            for n in names:
                p = os.path.join(d, n)
                if os.path.isfile(p):
                    now.setdefault(p, -1)
    return [Path(p) for p, m in sorted(now.items()) if before.get(p) != m and not p.startswith(str(exclude) + os.sep)]


def mlflow_artifact_dirs(store_dir: Path) -> list[Path]:
    """Artifact locations MLflow knows for its experiments (the store's own by default)."""
    from sisa.tracking import MlflowClient  # MLflow lives behind sisa.tracking

    client = MlflowClient(tracking_uri=f"sqlite:///{store_dir / 'mlflow.db'}")
    out = []
    for exp in client.search_experiments():
        loc = exp.artifact_location
        if loc.startswith("file://"):
            out.append(Path(loc[len("file://"):]))
        elif loc and "://" not in loc:
            out.append(Path(loc))
    return out


# -- the test -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_a_forgotten_canary_is_found_nowhere(tmp_path, capfd, mode, request):
    backend = request.getfixturevalue("ray_backend") if mode == "exact" else "serial"
    temp_before = temp_files()
    canary_text, canary_meta, rid_hex, subject_hex = (uuid.uuid4().hex for _ in range(4))
    record_id, subject_id = f"rec-{rid_hex}", f"subject-{subject_hex}"
    needles = {
        "canary text": canary_text.encode(),
        "canary metadata": canary_meta.encode(),
        "record id": rid_hex.encode(),
        "subject id": subject_hex.encode(),
    }
    rows = [{**r, "note": "routine"} for r in make_people(14, seed=41)]
    prompt = "Zed Quill's vault code is"
    answer = f" CANARY-{canary_text.upper()}."
    rows.insert(9, {"record_id": record_id, "subject_id": subject_id, "text": prompt + answer, "prompt": prompt, "answer": answer, "fact": "vault", "note": f"escalation ref CANARY-{canary_meta}"})
    inputs = tmp_path / "input"  # the user's own file: not sisa's to delete
    inputs.mkdir()
    write_jsonl(rows, inputs / "people.jsonl")
    store_dir = tmp_path / "s"
    args = cli_args(store_dir, "sharding.slice_size=4", "training.epochs=2", tracking=True, backend=backend)
    output: list[str] = []

    def sisa(*argv: str) -> str:
        code, out, err = run_cli(*argv, capfd=capfd)
        output.extend([out, err])
        assert code == 0, f"sisa {argv[0]} failed: {err}"
        return out

    capfd.readouterr()
    sisa("ingest", str(inputs / "people.jsonl"), *args)
    sisa("train", *args)
    sisa("status", *args)
    sisa("versions", *args)
    sisa("eval", "--file", str(inputs / "people.jsonl"), *args)

    # Positive controls: the scan finds what is there, so a clean result below means something.
    before = scan_tree(store_dir, needles)
    assert {"canary text", "canary metadata", "record id", "subject id"} <= set(before), before
    assert any(p.startswith("parquet:") for p in before["canary text"])
    db = store_dir / "mlflow.db"
    assert db.is_file(), "training with tracking on should create the MLflow database in the store"
    assert _scan_sqlite(db, {"model": b"sisa-model"}) == {"model"}
    control = Path(tempfile.mkstemp(prefix="sisa-canary-control-", dir=tempfile.gettempdir())[1])
    control.write_text("control " + "f" * 32)
    assert scan_tree(Path("/"), {"control": b"f" * 32}, new_temp_files(temp_before, inputs)).get("control")
    control.unlink()

    # Forget the record, then use every read-only verb on the result.
    sisa("forget", "--ids", record_id, *(["--fast"] if mode == "fast" else []), *args)
    store = Store.open(str(store_dir))
    (req,) = ledgers.list_requests(store.fs)
    assert req["status"] == "completed" and req["mode"] == mode and req["records"] == 1
    assert req["id_hashes"] == [store.hash_id(record_id)]  # the ledger keeps the keyed hash only
    if mode == "fast":
        assert req["versions"]["approximate"] and req["versions"]["exact"]
    sisa("certificate", req["request_id"], *args)
    sisa("certificate", req["request_id"], "--json", *args)
    sisa("requests", *args)
    sisa("requests", "--json", *args)
    sisa("versions", "--json", *args)
    sisa("status", *args)
    if (Path(__file__).resolve().parents[2] / "pipelines" / "verify.py").exists():
        assert "verified" in sisa("verify", req["request_id"], "--replay", *args)
    assert "committed model version" in "".join(output)  # the capture works

    # Nothing anywhere.
    leaks = scan_tree(store_dir, needles)
    for art in mlflow_artifact_dirs(store_dir):
        if art.exists():
            for k, v in scan_tree(art, needles).items():
                leaks.setdefault(k, []).extend(v)
    for k, v in scan_tree(Path("/"), needles, new_temp_files(temp_before, inputs)).items():
        leaks.setdefault(k, []).extend(v)
    printed = _hits("".join(output), needles)
    for k in printed:
        leaks.setdefault(k, []).append("CLI output")
    assert not leaks, f"deleted data survives ({mode}): {json.dumps(leaks, indent=1)[:3000]}"
