"""Store-level locks, so two writers never interleave.

Two of them, always taken in this order: the jobs lock (`JOBS.LOCK`), held by long work that
trains, retrains, purges or verifies (train, forget, process, rollback, gc, verify), so two of
those never run at once; and the writer lock (`LOCK`), held by every write of metadata (ingest,
a queued request and its relief, a version commit). A batch (`sisa process`) lets go of the
writer lock while its shard jobs train, so a request queued then gets its relief at once.

The lock is a file created with O_EXCL holding the owner's pid, host and start time. A second
writer waits up to `timeout_s`, then fails naming the owner. A lock whose owner process is dead
(same host, pid gone) is stale and is taken over. On an object store there is no O_EXCL; the
lock is best effort there (create-if-absent), and the README says to run one writer at a time.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from storage.errors import StoreLockedError
from storage.fs import StoreFS
from storage.layout import LOCK


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

    def _owner(self) -> dict:
        try:
            return json.loads(self.fs.read_bytes(self.path))
        except Exception:
            return {}

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
        if self.fs.exists(self.path):
            return False
        self.fs.write_bytes(self.path, body)
        return True

    def _clear_if_stale(self) -> bool:
        owner = self._owner()
        pid, host = owner.get("pid"), owner.get("host")
        if pid is None and self.fs.exists(self.path):
            # Unreadable lock file (a writer died between create and write): stale after a grace.
            info = self.fs.fs.get_file_info(self.fs.full(self.path))
            if info.mtime and time.time() - info.mtime.timestamp() > 5:
                self.fs.delete(self.path)
                return True
            return False
        if host == socket.gethostname() and pid is not None and not _pid_alive(int(pid)):
            self.fs.delete(self.path)
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
                raise StoreLockedError(
                    f"store {self.fs.uri}{which} is locked by PID {o.get('pid', '?')} on {o.get('host', '?')} "
                    f"since {o.get('since', '?')} ({o.get('purpose') or 'unknown work'}); waited "
                    f"{self.timeout_s:g}s. Wait for it to finish, or raise store.lock_timeout_s."
                )
            time.sleep(0.2)

    def release(self) -> None:
        if self.held:
            owner = self._owner()
            if owner.get("pid") == os.getpid():
                self.fs.delete(self.path)
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
