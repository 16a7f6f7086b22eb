"""Helpers shared by the test folders: the tiny config, the CLI in-process, a trained store, a
store's digest, the leak scanner.

Plain functions, imported by name (`from tests.helpers import make_cfg`); the fixtures live in
the conftest files, which pytest loads itself and which are not imported as modules.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import sqlite3
import stat
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from sisa.pipelines.cli import main
from sisa.storage.store import Store

from sisa.config import SisaConfig, load_config
from sisa.data.synthetic import write_jsonl

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


# -- configs and the CLI ----------------------------------------------------------------------------
def overrides(root: Path | str, *extra: str, tracking: bool = False, backend: str = "serial") -> list[str]:
    """Dotted overrides of configs/tiny.yaml: a store at `root`, serial and untracked by default;
    `extra` comes last, so it wins. Relief is off by default here, so a test of the exact path
    sees the exact version come right after the one before; tests of relief turn it on."""
    return [
        f"store.uri={root}",
        f"scheduler.backend={backend}",
        f"tracking.enabled={str(tracking).lower()}",
        "deletion.relief=false",
        *extra,
    ]


def make_cfg(root: Path | str, *extra: str, tracking: bool = False, backend: str = "serial") -> SisaConfig:
    return load_config(TINY, overrides(root, *extra, tracking=tracking, backend=backend))


def cli_args(root: Path | str, *extra: str, tracking: bool = False, backend: str = "serial") -> list[str]:
    """The same config spelled for `sisa VERB ...`."""
    return ["--config", TINY, *overrides(root, *extra, tracking=tracking, backend=backend)]


def run_cli(*argv: str, capfd=None) -> tuple[int, str, str]:
    """`sisa ARGV...` in this process: (exit code, stdout, stderr) as the user would see them.

    What Python code prints is captured here; given pytest's `capfd`, what reached the file
    descriptors (native code, handlers bound to the real streams) is appended, so a test that
    must see every byte printed passes it.
    """
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    stdout, stderr = out.getvalue(), err.getvalue()
    if capfd is not None:
        fd_out, fd_err = capfd.readouterr()
        stdout, stderr = stdout + fd_out, stderr + fd_err
    return code, stdout, stderr


class RecordingCli:
    """`sisa` verbs run in this process (`run_cli`), everything they printed kept in `output` for
    a test's leak scan. A call asserts its exit code (`expect`, 0 by default) and returns stdout,
    or stdout and stderr when it was expected to fail (where the error is)."""

    def __init__(self, capfd=None):
        self.capfd = capfd
        self.output: list[str] = []

    def __call__(self, *argv: str, expect: int = 0) -> str:
        code, out, err = run_cli(*argv, capfd=self.capfd)
        self.output.extend([out, err])
        assert code == expect, f"sisa {argv[0]} exited {code}: {err[-2000:]}"
        return out if expect == 0 else out + err


def one_slice_subjects(store) -> dict[str, tuple[int, int]]:
    """subject_id → (shard_id, slice_idx) of every subject whose records all sit in one slice
    (sorted by subject: the same pick every run)."""
    where: dict[str, set[tuple[int, int]]] = {}
    for r in store.index.table.to_pylist():
        where.setdefault(r["subject_id"], set()).add((r["shard_id"], r["slice_idx"]))
    return {s: next(iter(p)) for s, p in sorted(where.items()) if len(p) == 1}


# -- a trained store -------------------------------------------------------------------------------
def ingest_rows(cfg: SisaConfig, rows: list[dict], path: Path) -> str:
    """Write rows as JSONL at `path` and ingest them; returns the ingest_id."""
    from sisa.pipelines import ingest

    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(rows, path)
    res = ingest.run(cfg, [str(path)])
    assert len(res) == 1 and not res[0].noop
    return res[0].ingest_id


class Trained(NamedTuple):
    """A store ingested and trained once: its config and the store, opened afterwards."""

    cfg: SisaConfig
    store: Store


def train_store(
    root: Path | str, rows: list[dict], *extra: str, tracking: bool = False, backend: str = "serial"
) -> Trained:
    """The trained store most tests start from: `rows` written to root/input/people.jsonl, ingested
    into a store at root/s (configs/tiny.yaml with `extra`, as `make_cfg`) and trained into model
    version 1. Each call trains its own store (own secret key, own checkpoints); the
    `make_trained_store` fixture of tests/conftest.py calls it under the test's tmp_path."""
    from sisa.pipelines import train  # torch and peft: only the tests that train pay for them

    root = Path(root)
    cfg = make_cfg(root / "s", *extra, tracking=tracking, backend=backend)
    ingest_rows(cfg, rows, root / "input" / "people.jsonl")
    res = train.run(cfg)
    assert res.model_version == 1 and not res.noop
    return Trained(cfg, Store.open(cfg.store.uri))


# -- adapters ---------------------------------------------------------------------------------------
def random_adapters(root: Path, names: list[str]):
    """(a PeftModel of the tiny random base with one adapter per name, its tokenizer): each
    adapter's LoRA B weights drawn from N(0, 0.5) under its own seed (its index), so the shards'
    distributions differ; the serving and mixture tests decode and score over them."""
    import torch  # only the tests that need adapters pay for torch and peft

    from sisa.config import LoraConfig, ModelConfig
    from sisa.model.adapters import attach_lora, load_adapters, save_adapter
    from sisa.model.base import load_base_model

    tiny = ModelConfig(name="tiny", device="cpu")
    lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    dirs = {}
    for i, name in enumerate(names):
        torch.manual_seed(i)
        model = attach_lora(load_base_model(tiny)[0], lora)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.5)
        dirs[name] = str(save_adapter(model, Path(root) / name))
    base, tokenizer = load_base_model(tiny)
    return load_adapters(base, dirs), tokenizer


# -- store state --------------------------------------------------------------------------------------
def tree_digest(root: Path | str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every folder and file under `root` with its sha256 (files in `skip`, relative paths, left
    out): a store's exact state, to prove an operation changed nothing."""
    root = str(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames.sort()
        out[rel + "/"] = "dir"
        for name in sorted(filenames):
            path = os.path.join(rel, name)
            if path in skip:
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


# -- leak scanning ------------------------------------------------------------------------------------
class Hit(NamedTuple):
    """One place a needle was found: the caller's label for the place, how the bytes were read
    (raw, gzip, parquet, sqlite, text) and the file."""

    place: str
    how: str
    path: str

    def __str__(self) -> str:
        return f"{self.place}: {self.how}: {self.path}"


_CHUNK = 1 << 24
_SQLITE_MAGIC = b"SQLite format 3\x00"


def files_under(root: Path | str, since: float | None = None, exclude: Iterable[Path | str] = ()) -> list[Path]:
    """Regular files under `root` (symlinks neither followed nor listed; folders in `exclude`
    skipped); with `since` (a time.time()), only files modified or created from then on."""
    excluded = {str(p) for p in exclude}
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        dirnames[:] = sorted(d for d in dirnames if os.path.join(dirpath, d) not in excluded)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue  # removed meanwhile by the process that wrote it
            if not stat.S_ISREG(st.st_mode):
                continue
            if since is not None and st.st_mtime < since and st.st_ctime < since:
                continue
            out.append(Path(path))
    return out


def _base64_cores(data: bytes) -> list[bytes]:
    """The base64 characters that encode `data` wherever it starts (three alignments), in the
    standard and the URL-safe alphabet, without the characters that depend on the bytes around it."""
    out = []
    for k in range(3):
        total = k + len(data)
        full = base64.b64encode(b"\x00" * k + data)[: 4 * (total // 3)]
        core = full[4 if k else 0 :]
        if len(core) >= 12:  # shorter would match by chance
            out += [core, core.translate(bytes.maketrans(b"+/", b"-_"))]
    return out


def _variants(needles: Mapping[str, str]) -> dict[str, tuple[list[bytes], list[bytes]]]:
    """name → (forms matched case-insensitively, forms matched exactly): UTF-8, UTF-16 (both
    byte orders), hex; base64 exactly."""
    out = {}
    for name, needle in needles.items():
        raw = needle.encode("utf-8", "surrogatepass")
        low = needle.lower()
        fold = [
            low.encode("utf-8", "surrogatepass"),
            low.encode("utf-16-le", "surrogatepass"),
            low.encode("utf-16-be", "surrogatepass"),
            raw.hex().encode(),
        ]
        out[name] = (fold, _base64_cores(raw))
    return out


def _match(data: bytes, variants: dict[str, tuple[list[bytes], list[bytes]]]) -> set[str]:
    low = data.lower()
    return {
        name for name, (fold, exact) in variants.items() if any(v in low for v in fold) or any(v in data for v in exact)
    }


def _as_needles(needles: Mapping[str, str] | Iterable[str]) -> dict[str, str]:
    return dict(needles) if isinstance(needles, Mapping) else {n: n for n in needles}


def canaries_in_text(text: str | bytes, needles: Mapping[str, str] | Iterable[str]) -> set[str]:
    """The names of the needles in `text` (printed output, log lines), in any encoding the file
    scan knows."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return _match(data, _variants(_as_needles(needles)))


def _scan_stream(f, variants) -> set[str]:
    """A binary stream read in overlapping chunks, so a needle across a chunk boundary counts."""
    overlap = max((len(v) for fold, exact in variants.values() for v in fold + exact), default=1)
    found: set[str] = set()
    tail = b""
    while chunk := f.read(_CHUNK):
        found |= _match(tail + chunk, variants)
        tail = chunk[-overlap:]
    return found


def _plain(value):
    """A decoded value as JSON-able text: bytes decoded, nested values kept."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _scan_parquet(path: Path, variants) -> set[str]:
    """Every value of every column (decompressed, decoded), the schema metadata and the column
    statistics."""
    pf = pq.ParquetFile(path)
    table = pf.read()
    text = json.dumps(table.to_pylist(), default=_plain, ensure_ascii=False) + "\n" + str(table.schema.metadata)
    meta = pf.metadata
    for i in range(meta.num_row_groups):
        for j in range(meta.num_columns):
            st = meta.row_group(i).column(j).statistics
            if st is not None and st.has_min_max:
                text += f"\n{_plain(st.min)}\n{_plain(st.max)}"
    return _match(text.encode("utf-8", "surrogatepass"), variants)


def _scan_sqlite(path: Path, variants) -> set[str]:
    """Every row of every table (blobs as bytes), and the database dumped as SQL."""
    found: set[str] = set()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if value is not None:
                        found |= _match(
                            value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass"), variants
                        )
        found |= _match("\n".join(con.iterdump()).encode("utf-8", "surrogatepass"), variants)
    finally:
        con.close()
    return found


def _scan_text(path: Path, variants) -> set[str]:
    """JSON (or JSON lines) decoded again, so a \\u-escaped copy counts too."""
    text = path.read_bytes().decode("utf-8", "replace")
    docs = []
    try:
        docs = [json.loads(text)]
    except ValueError:
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                docs.append(json.loads(line))
    return _match(json.dumps(docs, ensure_ascii=False).encode("utf-8", "surrogatepass"), variants) if docs else set()


def _scan_file(path: Path, variants) -> list[tuple[str, set[str]]]:
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(0)
        results = [("raw", _scan_stream(f, variants))]
    if head.startswith(b"\x1f\x8b"):
        with contextlib.suppress(OSError, EOFError), gzip.open(path, "rb") as g:
            results.append(("gzip", _scan_stream(g, variants)))
    if head.startswith(b"PAR1") or path.suffix == ".parquet":
        results.append(("parquet", _scan_parquet(path, variants)))
    elif head.startswith(_SQLITE_MAGIC) or path.suffix in (".db", ".sqlite"):
        results.append(("sqlite", _scan_sqlite(path, variants)))
    elif path.suffix in (".json", ".jsonl", ".txt", ".log", ".out", ".err", ""):
        results.append(("text", _scan_text(path, variants)))
    return results


def find_canaries(
    places: Mapping[str, Path | str | Iterable[Path]],
    needles: Mapping[str, str] | Iterable[str],
    strict: Container[str] = (),
) -> dict[str, list[Hit]]:
    """Where each needle is, over every file of every place: needle name → hits (empty if none).

    A place is a folder (every regular file under it) or a list of files. Each file is read as
    raw bytes, and, where it is one, as gzip, Parquet (values, metadata, statistics), sqlite (rows
    and an SQL dump) and JSON/text decoded; each needle is looked for as UTF-8 and UTF-16 text
    (case-insensitively), as hex and as base64. A needle names itself when given as a list.
    Files that vanish or cannot be decoded are skipped, except in the places named in `strict`
    (the store: a file of ours that cannot be read there is an error, not a pass).
    """
    needles = _as_needles(needles)
    variants = _variants(needles)
    found: dict[str, list[Hit]] = {name: [] for name in needles}
    for place, files in places.items():
        paths = files_under(files) if isinstance(files, str | Path) else [Path(p) for p in files]
        for path in paths:
            try:
                results = _scan_file(path, variants)
            except (OSError, ValueError, pa.ArrowException, sqlite3.Error):
                if place in strict:
                    raise
                continue  # a temp file removed meanwhile, a socket, another test's damaged file
            for how, names in results:
                for name in names:
                    found[name].append(Hit(place, how, str(path)))
    return found
