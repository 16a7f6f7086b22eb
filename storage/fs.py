"""Bytes at rest: a pyarrow filesystem rooted at the store, with atomic writes.

A store is a local path or any URI pyarrow.fs understands (s3://, gs://, hdfs://). A reader
never sees a half-written file. On a local disk (and any filesystem but S3) every write goes to a
temporary name under `tmp/` and is then moved into place by an atomic rename. On S3 there is no
rename (pyarrow's move is copy-then-delete), but an object becomes visible only when its PUT (or
multipart upload) completes, whole: there each object is written straight to its key, which leaves
no temporary copy of record text in the bucket if a writer dies. What consists of several objects
(a checkpoint folder, a version) is published by writing the object that makes it exist last (the
checkpoint's manifest, the CURRENT pointer).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from sisa.storage.errors import IntegrityError, StoreError
from sisa.storage.schemas import UNIQUE_COLUMNS

TMP_DIR = "tmp"


class StoreFS:
    """A filesystem plus the store's root path; all paths given to it are relative to the root."""

    def __init__(self, uri: str):
        self.uri = uri
        if "://" in uri:
            try:
                self.fs, root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, OSError) as e:
                raise StoreError(f"store.uri {uri!r} is not a usable filesystem URI: {e}") from None
        else:
            self.fs = pafs.LocalFileSystem()
            root = os.path.abspath(uri)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)
        # An S3 PUT is atomic: objects go straight to their key (see the module docstring).
        self.atomic_put = isinstance(self.fs, pafs.S3FileSystem)
        # Bumped by every write, move and delete through this object: caches of what the store
        # holds (the record index) key on it, so this process never reads its own change stale.
        self.generation = 0

    # -- paths ---------------------------------------------------------------------------------
    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def local_path(self, rel: str = "") -> str | None:
        """The OS path of `rel` on a local store, None on an object store."""
        return self.full(rel) if self.is_local else None

    # -- queries -------------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.full(rel)).type != pafs.FileType.NotFound

    def is_dir(self, rel: str) -> bool:
        return self.fs.get_file_info(self.full(rel)).type == pafs.FileType.Directory

    def list(self, rel: str, recursive: bool = False) -> list[pafs.FileInfo]:
        """Entries under `rel` (empty when it does not exist), sorted by path."""
        sel = pafs.FileSelector(self.full(rel), allow_not_found=True, recursive=recursive)
        infos = self.fs.get_file_info(sel)
        return sorted(infos, key=lambda i: i.path)

    def rel(self, full_path: str) -> str:
        return full_path[len(self.root) + 1 :]

    def size(self, rel: str = "") -> int:
        """Bytes under `rel` (a file or a folder)."""
        info = self.fs.get_file_info(self.full(rel))
        if info.type == pafs.FileType.File:
            return info.size or 0
        return sum(i.size or 0 for i in self.list(rel, recursive=True) if i.type == pafs.FileType.File)

    # -- reads ---------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.full(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise StoreError(f"{rel} is missing from the store at {self.uri}") from None

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_parquet(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.full(rel), columns=columns, filesystem=self.fs)

    def read_verified(self, rel: str, sha256: str) -> bytes:
        data = self.read_bytes(rel)
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise IntegrityError(
                f"{rel} is damaged: sha256 {got[:16]}... does not match the recorded {sha256[:16]}...; "
                "restore it from a backup or retrain (sisa verify names every damaged file)"
            )
        return data

    # -- writes (all atomic) -------------------------------------------------------------------
    def _tmp_name(self, rel: str) -> str:
        base = rel.rsplit("/", 1)[-1]
        return f"{TMP_DIR}/{uuid.uuid4().hex}.{base}.tmp"

    def _move_into_place(self, tmp_rel: str, rel: str) -> None:
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        if parent:
            self.fs.create_dir(self.full(parent), recursive=True)
        if self.is_local:
            os.replace(self.full(tmp_rel), self.full(rel))
        else:
            self.fs.move(self.full(tmp_rel), self.full(rel))

    def write_bytes(self, rel: str, data: bytes | pa.Buffer) -> str:
        """Write atomically; returns the sha256 of the bytes."""
        if self.atomic_put:
            with self.fs.open_output_stream(self.full(rel)) as f:
                f.write(data)
            self.generation += 1
            return hashlib.sha256(data).hexdigest()
        self.fs.create_dir(self.full(TMP_DIR), recursive=True)
        tmp = self._tmp_name(rel)
        with self.fs.open_output_stream(self.full(tmp)) as f:
            f.write(data)
        if self.is_local:
            _fsync(self.full(tmp))
        self._move_into_place(tmp, rel)
        self.generation += 1
        return hashlib.sha256(data).hexdigest()

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())

    def write_parquet(self, rel: str, table: pa.Table) -> str:
        """Write a Parquet file atomically; returns its sha256."""
        buf = pa.BufferOutputStream()
        # Dictionary pages only where values repeat: on unique columns (ids, text, digests) the
        # writer builds a dictionary, overflows it and falls back, which costs time for nothing.
        dictionary = [c for c in table.column_names if c not in UNIQUE_COLUMNS]
        pq.write_table(table, buf, compression="zstd", use_dictionary=dictionary)
        return self.write_bytes(rel, buf.getvalue())

    def write_new_json(self, rel: str, obj: Any) -> bool:
        """Write only if `rel` does not exist yet (append-only ledgers); False if it did."""
        if self.exists(rel):
            return False
        self.write_json(rel, obj)
        return True

    def delete(self, rel: str) -> None:
        """Delete a file or a folder; missing is fine (deletion is idempotent)."""
        self.generation += 1
        info = self.fs.get_file_info(self.full(rel))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.full(rel))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.full(rel))

    def make_dir(self, rel: str) -> None:
        self.fs.create_dir(self.full(rel), recursive=True)

    @contextmanager
    def staging_dir(self, name: str) -> Iterator[str]:
        """A fresh local folder under tmp/ for multi-file artefacts; removed on exit."""
        rel = f"{TMP_DIR}/{uuid.uuid4().hex}.{name}"
        self.make_dir(rel)
        try:
            yield rel
        finally:
            self.delete(rel)

    def move_dir(self, src_rel: str, dst_rel: str) -> None:
        """Move a staged folder into place; the destination must not exist."""
        parent = dst_rel.rsplit("/", 1)[0]
        self.generation += 1
        self.fs.create_dir(self.full(parent), recursive=True)
        if self.is_local:
            os.rename(self.full(src_rel), self.full(dst_rel))
        else:
            self.fs.move(self.full(src_rel), self.full(dst_rel))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
