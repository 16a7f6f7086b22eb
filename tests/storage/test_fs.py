"""StoreFS: atomic writes through tmp/ + rename, verified reads, idempotent deletes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
import sisa.storage.fs as fs_module
from sisa.storage.errors import IntegrityError, StoreError
from sisa.storage.fs import TMP_DIR, StoreFS


@pytest.fixture
def fs(tmp_path) -> StoreFS:
    return StoreFS(str(tmp_path / "s"))


def test_write_bytes_returns_sha256_and_leaves_no_temp_file(fs):
    digest = fs.write_bytes("a/b/c.bin", b"hello")
    assert digest == hashlib.sha256(b"hello").hexdigest()
    assert fs.read_bytes("a/b/c.bin") == b"hello"
    assert fs.list(TMP_DIR) == []


def test_write_goes_to_a_temp_name_then_is_renamed(fs, monkeypatch):
    moves: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst):
        # At the moment of the rename the bytes are complete under tmp/ and absent at the target.
        assert Path(src).read_bytes() == b"new"
        assert Path(dst).read_bytes() == b"old"
        moves.append((src, dst))
        real_replace(src, dst)

    fs.write_bytes("x.json", b"old")
    monkeypatch.setattr(fs_module.os, "replace", spy)
    fs.write_bytes("x.json", b"new")
    assert len(moves) == 1
    src, dst = moves[0]
    assert os.path.dirname(src) == fs.full(TMP_DIR)
    assert dst == fs.full("x.json")
    assert fs.read_bytes("x.json") == b"new"


def test_a_write_that_fails_midway_leaves_the_old_file(fs, monkeypatch):
    fs.write_bytes("CURRENT", b"old")

    def crash(path):
        raise OSError("disk gone")

    monkeypatch.setattr(fs_module, "_fsync", crash)
    with pytest.raises(OSError):
        fs.write_bytes("CURRENT", b"new")
    assert fs.read_bytes("CURRENT") == b"old"


def test_json_roundtrip_is_sorted_and_stable(fs):
    fs.write_json("m.json", {"b": 1, "a": [1, 2]})
    assert fs.read_json("m.json") == {"b": 1, "a": [1, 2]}
    raw = fs.read_bytes("m.json")
    assert raw == (json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n").encode()


def test_write_new_json_never_overwrites(fs):
    assert fs.write_new_json("ledger/1.json", {"n": 1}) is True
    assert fs.write_new_json("ledger/1.json", {"n": 2}) is False
    assert fs.read_json("ledger/1.json") == {"n": 1}


def test_parquet_roundtrip_and_sha(fs):
    table = pa.table({"record_id": ["a", "b"], "n": [1, 2]})
    digest = fs.write_parquet("data/p.parquet", table)
    assert fs.read_parquet("data/p.parquet").equals(table)
    assert fs.read_parquet("data/p.parquet", columns=["n"]).column_names == ["n"]
    assert digest == hashlib.sha256(fs.read_bytes("data/p.parquet")).hexdigest()


def test_read_verified_detects_damage(fs):
    digest = fs.write_bytes("ckpt/adapter.safetensors", b"weights")
    assert fs.read_verified("ckpt/adapter.safetensors", digest) == b"weights"
    with open(fs.full("ckpt/adapter.safetensors"), "wb") as f:
        f.write(b"weightz")
    with pytest.raises(IntegrityError, match="ckpt/adapter.safetensors is damaged"):
        fs.read_verified("ckpt/adapter.safetensors", digest)


def test_missing_file_is_a_store_error_naming_it(fs):
    with pytest.raises(StoreError, match="nope.json is missing"):
        fs.read_bytes("nope.json")


def test_delete_is_idempotent_for_files_and_folders(fs):
    fs.write_bytes("d/one", b"1")
    fs.write_bytes("d/sub/two", b"2")
    fs.delete("d/one")
    assert not fs.exists("d/one")
    fs.delete("d/one")
    fs.delete("d")
    assert not fs.exists("d")
    fs.delete("d")


def test_list_is_sorted_and_size_sums_files(fs):
    for name in ("c", "a", "b"):
        fs.write_bytes(f"dir/{name}", name.encode() * 10)
    assert [fs.rel(i.path) for i in fs.list("dir")] == ["dir/a", "dir/b", "dir/c"]
    assert fs.list("absent") == []
    assert fs.size("dir") == 30
    assert fs.size("dir/a") == 10


def test_staging_dir_is_removed_and_move_dir_places_it(fs):
    with fs.staging_dir("ckpt") as rel:
        assert rel.startswith(f"{TMP_DIR}/")
        fs.write_bytes(f"{rel}/f", b"x")
        staged = rel
    assert not fs.exists(staged)
    with fs.staging_dir("ckpt") as rel:
        fs.write_bytes(f"{rel}/f", b"x")
        fs.move_dir(rel, "checkpoints/shard=00000/c1")
    assert fs.read_bytes("checkpoints/shard=00000/c1/f") == b"x"
    assert fs.list(TMP_DIR) == []


def test_file_uri_and_local_path_agree(tmp_path):
    a = StoreFS(str(tmp_path / "s"))
    b = StoreFS(f"file://{tmp_path}/s")
    a.write_bytes("k", b"v")
    assert b.read_bytes("k") == b"v"
    assert a.local_path("k") == str(tmp_path / "s" / "k")


def test_unusable_uri_is_a_store_error():
    with pytest.raises(StoreError, match="not a usable filesystem URI"):
        StoreFS("nosuchscheme://bucket/x")
