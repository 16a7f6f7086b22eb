"""Reading input data into Arrow: JSONL, CSV, Parquet, HF dataset folders, Datasets, Tables.

The one module that imports `datasets`. Every reader returns a `Source`: the table plus, for each
row, the position a user would look for in the file (JSONL line number, CSV line, Parquet row), so
errors can name them. Malformed input is collected, never half-read: a reader raises one
ValidationError naming every bad line (the first 20 and a count), without quoting its content,
which may be personal data.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from sisa.storage.errors import ValidationError, list_some

SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


@dataclass
class Source:
    table: pa.Table
    positions: np.ndarray  # per row: the line/row number to show in errors (1-based)
    unit: str  # "line" or "row"
    name: str  # shown as the provenance `source` unless the config names one
    sha256: str  # of the input bytes (or of the table), to recognise a re-ingest

    def where(self, rows: np.ndarray | list[int]) -> list[str]:
        return [f"{self.unit} {int(self.positions[r])}" for r in rows]


def read_source(path: str) -> Source:
    """Read one input path; the format comes from the suffix, or a folder is an HF dataset."""
    if not os.path.exists(path):
        raise ValidationError(f"input {path!r} does not exist")
    if os.path.isdir(path):
        return read_dataset_folder(path)
    kind = SUFFIXES.get(os.path.splitext(path)[1].lower())
    if kind is None:
        raise ValidationError(f"input {path!r}: unknown format; use .jsonl, .csv, .parquet or a `save_to_disk` folder")
    name = os.path.basename(path)
    if kind == "jsonl":
        return read_jsonl_file(path, name)
    with open(path, "rb") as f:
        data = f.read()
    if kind == "csv":
        return read_csv_bytes(data, name)
    return read_parquet_bytes(data, name)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _nonblank_lines(lines: Iterable[bytes]) -> np.ndarray:
    return np.asarray([i for i, line in enumerate(lines, start=1) if line.strip()], dtype=np.int64)


# pyarrow's JSON reader kills the process (SIGSEGV, pyarrow 25.0.1) when a block starts with a
# bare `null` line. Such a line is never a record, so input holding one takes the slow path,
# which names it. The scan costs ~50 ms per 100 MB.
_BARE_NULL_LINE = re.compile(rb"null[ \t\r]*(?:\n|\Z)")
_READ_BLOCK = 1 << 24


def _blocks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK):
            yield block


def _scan_jsonl(blocks: Iterable[bytes]) -> tuple[str, int, bool]:
    """One pass over the input: (sha256, number of lines, whether some line ends in a bare `null`).

    The input comes in blocks, so a file is never held whole beside the table parsed from it.
    Only whole lines are searched; the end of a line cut by a block boundary is carried over
    (as much of it as a match could still start in: a `null` and the blanks after it).
    """
    digest = hashlib.sha256()
    newlines, ends_with_newline, bare_null, carry = 0, False, False, b""
    for block in blocks:
        digest.update(block)
        newlines += block.count(b"\n")
        ends_with_newline = block.endswith(b"\n")
        if bare_null:
            continue
        buf = carry + block
        cut = buf.rfind(b"\n") + 1
        bare_null = _BARE_NULL_LINE.search(buf, 0, cut) is not None
        rest = buf[cut:]
        carry = rest[max(0, len(rest.rstrip(b" \t\r")) - 4) :]
    bare_null = bare_null or _BARE_NULL_LINE.search(carry) is not None
    return digest.hexdigest(), newlines + (0 if ends_with_newline else 1), bare_null


def read_jsonl_file(path: str, name: str) -> Source:
    """A JSONL file, read in blocks: the raw bytes never sit in memory beside the table. Fast path
    with pyarrow; on any failure, a line-by-line parse that names every bad line."""
    digest, lines, bare_null = _scan_jsonl(_blocks(path))
    if bare_null:
        return _read_jsonl_slow(_read_all(path), name)
    try:
        table = _parse_jsonl(path)
        # The JSON reader does not check that strings are UTF-8; invalid bytes would surface
        # later as an unexplained Arrow error. The slow path names the lines.
        table.validate(full=True)
        # Usually one record per line and no blank lines: then row i is line i+1, no need to split.
        if lines == table.num_rows:
            positions = np.arange(1, lines + 1, dtype=np.int64)
        else:
            with open(path, "rb") as f:
                positions = _nonblank_lines(f)
        if len(positions) == table.num_rows:
            return Source(table, positions, "line", name, digest)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    return _read_jsonl_slow(_read_all(path), name)


def _parse_jsonl(path: str) -> pa.Table:
    """pyarrow's streaming reader converts each block as it reads it; `read_json` keeps every
    block unconverted until the end (~2.4x the table at peak, against ~1.4x, and slower). The
    streaming reader takes its schema from the first block, so input whose later blocks bring
    new fields or other types is read again by `read_json`, which infers over all blocks."""
    options = pajson.ReadOptions(block_size=_READ_BLOCK)
    try:
        return pajson.open_json(path, read_options=options).read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pajson.read_json(path, read_options=options)


def _read_all(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_jsonl_slow(data: bytes, name: str) -> Source:
    rows: list[dict] = []
    positions: list[int] = []
    bad: list[str] = []
    for i, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad.append(f"line {i} (not valid JSON)")
            continue
        if not isinstance(obj, dict):
            bad.append(f"line {i} (not a JSON object)")
            continue
        if _has_lone_surrogate(raw, obj):
            bad.append(f"line {i} (a \\u escape encodes half a surrogate pair: not valid unicode)")
            continue
        rows.append(obj)
        positions.append(i)
    if bad:
        raise ValidationError(f"{name}: {len(bad)} malformed line(s): {list_some(bad)}; nothing was ingested")
    # Columns whose values mix types cannot become one Arrow column: name them and their lines.
    types: dict[str, dict[str, int]] = {}
    for obj, line in zip(rows, positions, strict=True):
        for k, v in obj.items():
            if v is None:
                continue
            t = _json_type(v)
            types.setdefault(k, {}).setdefault(t, line)
    mixed = []
    for col, seen in types.items():
        kinds = set(seen) - {"int", "float"} if {"int", "float"} <= set(seen) else set(seen)
        if {"int", "float"} <= set(seen):
            kinds.add("number")
        if len(kinds) > 1:
            detail = ", ".join(f"{t} at line {ln}" for t, ln in sorted(seen.items(), key=lambda x: x[1]))
            mixed.append(f"`{col}` ({detail})")
    if mixed:
        raise ValidationError(f"{name}: columns with mixed types: {list_some(mixed)}; nothing was ingested")
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        clashes = _nested_clashes(rows, positions)
        if clashes:
            raise ValidationError(
                f"{name}: nested values of different types: {list_some(clashes)}; nothing was ingested"
            ) from None
        raise ValidationError(f"{name}: cannot form a table ({type(e).__name__}); check nested values") from None
    return Source(table, np.asarray(positions, dtype=np.int64), "line", name, _digest(data))


def _nested_clashes(rows: list[dict], positions: list[int]) -> list[str]:
    """Per column that cannot become one Arrow column: the lines whose value does not combine
    with the column's most common shape (e.g. a chat turn whose content is a number). Only
    types are compared; no value is shown."""
    out = []
    for col in sorted({k for r in rows for k in r}):
        values = [r.get(col) for r in rows]
        try:
            pa.array(values)
            continue
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        shapes: dict[str, int] = {}
        for i, v in enumerate(values):
            if v is not None:
                with contextlib.suppress(pa.ArrowInvalid, pa.ArrowTypeError):
                    shapes.setdefault(str(pa.array([v]).type), i)
        counts = {t: sum(1 for v in values if v is not None and _type_of(v) == t) for t in shapes}
        if not counts:
            continue
        ref = values[shapes[max(counts, key=counts.get)]]
        bad = []
        for v, line in zip(values, positions, strict=True):
            try:
                pa.array([ref, v])
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                bad.append(line)
        if bad:
            out.append(f"`{col}` at {list_some([f'line {b}' for b in bad])}")
    return out


def _type_of(v: object) -> str | None:
    try:
        return str(pa.array([v]).type)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


def _has_lone_surrogate(raw: bytes, obj: dict) -> bool:
    """JSON may spell a lone surrogate as `\\ud800`; such a string has no UTF-8 form."""
    if b"\\u" not in raw:
        return False
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _json_type(v: object) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    return "object"


def read_csv_bytes(data: bytes, name: str) -> Source:
    # UTF-8 first, naming the line: pyarrow hands a malformed row's bytes to the invalid-row
    # handler as text, and a row that is not UTF-8 failed inside its callback, unreported.
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as u:
        line = data.count(b"\n", 0, u.start) + 1
        raise ValidationError(f"{name}: the file is not valid UTF-8 (line {line}); nothing was ingested") from None
    bad: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(f"line {row.number}" if row.number is not None else "a row")
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid, newlines_in_values=True),
            # Every column as text: ids like 007 keep their zeros; the user's types are theirs.
            convert_options=pacsv.ConvertOptions(
                column_types=_all_string_types(data), strings_can_be_null=False, quoted_strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid:
        raise ValidationError(f"{name}: the file cannot be parsed as CSV; nothing was ingested") from None
    if bad:
        raise ValidationError(
            f"{name}: {len(bad)} malformed line(s) (wrong number of fields): {list_some(bad)}; nothing was ingested"
        )
    positions = _csv_line_numbers(data, table.num_rows)
    return Source(table, positions, "line", name, _digest(data))


def _all_string_types(data: bytes) -> dict[str, pa.DataType]:
    header = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r")
    names = next(csv.reader([header]), [])
    return dict.fromkeys(names, pa.string())


def _csv_line_numbers(data: bytes, n: int) -> np.ndarray:
    """Starting line of each data row (quoted newlines make rows span lines)."""
    starts: list[int] = []
    line = 1
    reader = csv.reader(io.StringIO(data.decode("utf-8", errors="replace"), newline=""))
    # The csv module refuses fields over 128 KiB by default; pyarrow has already read them.
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(data) + 1))
    try:
        next(reader, None)
        line = reader.line_num + 1
        for _ in reader:
            starts.append(line)
            line = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)
    if len(starts) != n:  # blank lines are skipped differently; fall back to row numbers
        return np.arange(2, n + 2, dtype=np.int64)
    return np.asarray(starts, dtype=np.int64)


def read_parquet_bytes(data: bytes, name: str) -> Source:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError):
        raise ValidationError(f"{name}: not a readable Parquet file; nothing was ingested") from None
    return Source(table, np.arange(1, table.num_rows + 1, dtype=np.int64), "row", name, _digest(data))


def read_dataset_folder(path: str) -> Source:
    import datasets

    try:
        ds = datasets.load_from_disk(path, keep_in_memory=True)
    except (FileNotFoundError, ValueError) as e:
        raise ValidationError(
            f"input folder {path!r} is not a `datasets` save_to_disk folder ({type(e).__name__})"
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        raise ValidationError(
            f"input folder {path!r} holds a DatasetDict with splits {list(ds)}; pass one split's folder"
        )
    return from_dataset(ds, os.path.basename(os.path.normpath(path)))


def from_dataset(ds, name: str = "dataset") -> Source:
    """A `datasets.Dataset` (zero copy: its Arrow table)."""
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    if ds._indices is not None:  # a shuffled/selected view: materialise the rows it shows
        table = ds.flatten_indices().data.table
    return from_table(table, name)


def from_table(table: pa.Table, name: str = "table") -> Source:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return Source(
        table, np.arange(1, table.num_rows + 1, dtype=np.int64), "row", name, _digest(sink.getvalue().to_pybytes())
    )


# The file layouts a local copy of a hub dataset may have, one file per config.
_LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".parquet": "parquet"}


def read_hub_dataset(path: str, name: str, split: str = "train") -> pa.Table:
    """One config's split of a Hugging Face dataset as an Arrow table: `path` is its hub name
    (`locuslab/TOFU`) or a local folder holding one file per config (`<name>.jsonl`, `.json`,
    `.jsonl.gz` or `.parquet`, as a snapshot of the hub repository has them). With the hub
    unreachable or offline (HF_HUB_OFFLINE=1) this fails at once with a ValidationError that
    says what to do, never a hang."""
    import datasets

    if os.path.isdir(path):
        found = [(path + "/" + name + s, b) for s, b in _LOCAL_SUFFIXES.items() if os.path.isfile(f"{path}/{name}{s}")]
        if not found:
            wanted = ", ".join(name + s for s in _LOCAL_SUFFIXES)
            raise ValidationError(f"dataset folder {path!r} has no file for config {name!r} (looked for {wanted})")
        file, builder = found[0]
        with tempfile.TemporaryDirectory(prefix="sisa-hf-") as cache:  # no copy of the file is left behind
            ds = datasets.load_dataset(builder, data_files=file, split=split, keep_in_memory=True, cache_dir=cache)
            return from_dataset(ds, name).table
    else:
        try:
            ds = datasets.load_dataset(path, name, split=split, keep_in_memory=True)
        except (ConnectionError, FileNotFoundError, ValueError) as e:
            raise ValidationError(
                f"cannot load config {name!r} of dataset {path!r} from the Hugging Face hub ({type(e).__name__}: "
                f"{str(e)[:200]}); on a machine without the hub, pass a local folder of its files or use the "
                "copy sisa ships"
            ) from None
    return from_dataset(ds, name).table
