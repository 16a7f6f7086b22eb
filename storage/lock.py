"""Store-level locks, so two writers never interleave.

Two of them, always taken in this order: the jobs lock (`JOBS.LOCK`), held by long work that
trains, retrains, purges or verifies (train, forget, process, rollback, gc, verify), so two of
those never run at once; and the writer lock (`LOCK`), held by every write of metadata (ingest,
a queued request and its relief, a version commit). A batch (`sisa process`) lets go of the
writer lock while its shard jobs train, so a request queued then gets its relief at once.

Each lock is a file created with O_EXCL holding the owner's pid, host and start time. A second
writer waits up to `timeout_s`, then fails naming the owner. A lock whose owner process is dead
(same host, pid gone) is stale and is taken over.

On S3 the lock is a lease object created with a conditional put (`If-None-Match: *`, see
storage/s3.py): of two writers racing for it, the server lets exactly one create it. It is
released, or taken over when stale, by a delete conditional on its ETag, so a writer never removes
a lease another one took meanwhile. Other object stores have no exclusive create that pyarrow
reaches: sisa refuses to take a writer lock there rather than pretend.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from sisa.storage.errors import StoreError, StoreLockedError
from sisa.storage.fs import StoreFS
from sisa.storage.layout import LOCK


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    def __init__(self, fs: StoreFS, timeout_s: float = 30.0, purpose: str = "", path: str = LOCK):
        self.fs = fs
        self.path = path
        self.timeout_s = timeout_s
        self.purpose = purpose
        self.held = False
        self._cond = None
        if not fs.is_local:
            if not fs.uri.startswith("s3://"):
                raise StoreError(
                    f"the store at {fs.uri} is on a filesystem without an exclusive create, so two "
                    "writers could interleave: use a local path or s3:// (a lease object written "
                    "with a conditional put)"
                )
            from sisa.storage.s3 import ConditionalPut

            self._cond = ConditionalPut(fs.uri)

    def _read(self) -> tuple[dict, str | None]:
        """The lock's owner (empty when absent or unreadable) and, on S3, the lease's ETag."""
        try:
            if self._cond is not None:
                found = self._cond.read(self.path)
                return (json.loads(found[0]), found[1]) if found else ({}, None)
            return json.loads(self.fs.read_bytes(self.path)), None
        except Exception:
            return {}, None

    def _owner(self) -> dict:
        return self._read()[0]

    def _delete(self, etag: str | None) -> None:
        """Remove the lock file; on S3 only the lease object that was read (matched by ETag)."""
        if self._cond is None:
            self.fs.delete(self.path)
        elif etag is not None:
            self._cond.delete(self.path, etag)

    def _try_acquire(self) -> bool:
        body = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
                "purpose": self.purpose,
            }
        ).encode()
        if self.fs.is_local:
            try:
                fd = os.open(self.fs.full(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            return True
        return self._cond.create(self.path, body) is not None

    def _clear_if_stale(self) -> bool:
        owner, etag = self._read()
        if self._cond is not None and etag is None and not owner:
            found = self._cond.read(self.path)  # present but unreadable: its ETag for the delete
            etag = found[1] if found else None
        pid, host = owner.get("pid"), owner.get("host")
        if pid is None and self.fs.exists(self.path):
            # Unreadable lock file (a writer died between create and write): stale after a grace.
            info = self.fs.fs.get_file_info(self.fs.full(self.path))
            if info.mtime and time.time() - info.mtime.timestamp() > 5:
                self._delete(etag)
                return True
            return False
        if host == socket.gethostname() and pid is not None and not _pid_alive(int(pid)):
            self._delete(etag)
            return True
        return False

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self._try_acquire():
                self.held = True
                return
            if self._clear_if_stale():
                continue
            if time.monotonic() >= deadline:
                o = self._owner()
                which = "" if self.path == LOCK else f" ({self.path})"
                gone = ""
                if self._cond is not None:  # an S3 lease: no process of ours can release it
                    gone = f" (if that host is gone for good, delete the object {self.path} under the store)"
                raise StoreLockedError(
                    f"store {self.fs.uri}{which} is locked by PID {o.get('pid', '?')} on {o.get('host', '?')} "
                    f"since {o.get('since', '?')} ({o.get('purpose') or 'unknown work'}); waited "
                    f"{self.timeout_s:g}s. Wait for it to finish, or raise store.lock_timeout_s{gone}."
                )
            time.sleep(0.2)

    def release(self) -> None:
        if self.held:
            owner, etag = self._read()
            if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                self._delete(etag)
            self.held = False

    @contextmanager
    def released(self) -> Iterator[None]:
        """Let go for the block, take it again after (waiting up to the timeout)."""
        self.release()
        try:
            yield
        finally:
            self.acquire()

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
