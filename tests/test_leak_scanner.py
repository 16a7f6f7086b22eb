"""The leak scanner of tests/helpers.py finds a canary however a file holds it, and only then.

The leak tests (tests/pipelines/test_canary.py, tests/reliability/test_leaks.py) pass when the
scanner finds nothing; these cases prove that "nothing" means the canary is not there.
"""

from __future__ import annotations

import base64
import gzip
import json
import sqlite3

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tests.helpers as helpers
from tests.helpers import canaries_in_text, files_under, find_canaries

CANARY = "CANARY-5d1f0c9e7a2b4f6c8e0a1b3c5d7e9f20"


def _write(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "data",
    [
        b"before " + CANARY.encode() + b" after",
        b"x" + CANARY.lower().encode(),  # case folded
        ("log: " + CANARY).encode("utf-16-le"),
        ("log: " + CANARY).encode("utf-16-be"),
        b"hex=" + CANARY.encode().hex().encode(),
        *[b"b64=" + base64.b64encode(b"p" * k + CANARY.encode() + b"q") for k in range(3)],
        b"b64url=" + base64.urlsafe_b64encode(b"\xfb\xff" + CANARY.encode()),
    ],
    ids=["utf8", "lowercase", "utf16le", "utf16be", "hex", "base64+0", "base64+1", "base64+2", "base64url"],
)
def test_raw_bytes_in_every_common_encoding(tmp_path, data):
    path = _write(tmp_path, "blob.bin", data)
    hits = find_canaries({"here": [path]}, {"c": CANARY})["c"]
    assert [(h.place, h.how, h.path) for h in hits] == [("here", "raw", str(path))]


def test_compressed_and_escaped_copies(tmp_path):
    _write(tmp_path, "a.log.gz", gzip.compress(f"line {CANARY}\n".encode()))
    _write(tmp_path, "b.json", json.dumps({"t": CANARY}).replace("C", "\\u0043").encode())  # JSON escapes
    pq.write_table(pa.table({"text": [f"x {CANARY} y"] * 50}), tmp_path / "c.parquet", compression="zstd")
    con = sqlite3.connect(tmp_path / "d.db")
    con.execute("CREATE TABLE t (v BLOB)")
    con.execute("INSERT INTO t VALUES (?)", (CANARY.encode(),))
    con.commit()
    con.close()
    hits = find_canaries({"folder": tmp_path}, {"c": CANARY})["c"]
    assert {(h.how, h.path.rsplit("/", 1)[1]) for h in hits} >= {
        ("gzip", "a.log.gz"),
        ("text", "b.json"),
        ("parquet", "c.parquet"),
        ("sqlite", "d.db"),
    }
    # Found by decoding: their raw bytes do not hold the canary.
    assert not any(h.how == "raw" and h.path.endswith(("a.log.gz", "b.json")) for h in hits)


def test_a_canary_across_a_chunk_boundary(tmp_path, monkeypatch):
    monkeypatch.setattr(helpers, "_CHUNK", 64)
    path = _write(tmp_path, "big.bin", b"." * 50 + CANARY.encode() + b"." * 100)
    assert find_canaries({"p": [path]}, [CANARY])[CANARY]


def test_nothing_is_found_where_nothing_is(tmp_path):
    _write(tmp_path, "other.txt", CANARY.replace("5", "6").encode())
    pq.write_table(pa.table({"text": ["nothing here"]}), tmp_path / "p.parquet")
    found = find_canaries({"folder": tmp_path}, {"c": CANARY})
    assert found == {"c": []}
    assert canaries_in_text("nothing here", [CANARY]) == set()
    assert canaries_in_text(f"printed {CANARY.upper()}", {"c": CANARY}) == {"c"}


def test_a_damaged_file_fails_a_strict_place_only(tmp_path):
    _write(tmp_path, "x.parquet", b"PAR1 this is not a parquet file")
    assert find_canaries({"other": tmp_path}, [CANARY]) == {CANARY: []}
    with pytest.raises(pa.ArrowException):
        find_canaries({"store": tmp_path}, [CANARY], strict={"store"})


def test_files_under_skips_links_and_old_files(tmp_path):
    old = _write(tmp_path, "old.txt", b"1")
    (tmp_path / "sub").mkdir()
    new = _write(tmp_path / "sub", "new.txt", b"2")
    (tmp_path / "link").symlink_to(new)
    assert files_under(tmp_path) == [old, new]
    assert files_under(tmp_path, exclude=[tmp_path / "sub"]) == [old]
    assert files_under(tmp_path / "absent") == []
