"""The writer lock on an S3 store: a lease object created with a conditional put, on a real
S3-compatible server (moto's, on loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from sisa.storage.errors import StoreError, StoreLockedError
from sisa.storage.fs import StoreFS
from sisa.storage.layout import LOCK
from sisa.storage.lock import StoreLock


def test_the_lease_is_one_object_that_only_one_writer_creates(s3_store):
    server, bucket, uri = s3_store
    fs = StoreFS(uri)
    first = StoreLock(fs, timeout_s=0, purpose="train")
    first.acquire()
    assert server.keys(bucket) == ["store/LOCK"]
    with pytest.raises(StoreLockedError) as err:
        StoreLock(StoreFS(uri), timeout_s=0.3, purpose="forget").acquire()
    assert f"PID {os.getpid()}" in err.value.message and "train" in err.value.message
    first.release()
    assert server.keys(bucket) == []
    with StoreLock(fs, timeout_s=0, purpose="again"):
        assert json.loads(fs.read_bytes(LOCK))["purpose"] == "again"


def test_racing_writers_never_both_hold_it(s3_store):
    _, _, uri = s3_store
    winners: list[int] = []
    start = threading.Barrier(6)

    def race(i: int) -> None:
        lock = StoreLock(StoreFS(uri), timeout_s=0, purpose=f"w{i}")
        start.wait()
        if lock._try_acquire():  # one attempt each, all at once: the server decides
            winners.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(winners) == 1


def test_a_dead_writers_lease_is_taken_over_and_a_foreign_one_is_not(s3_store):
    _, _, uri = s3_store
    fs = StoreFS(uri)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    import socket

    fs.write_bytes(LOCK, json.dumps({"pid": p.pid, "host": socket.gethostname()}).encode())
    with StoreLock(fs, timeout_s=0, purpose="taker"):
        assert json.loads(fs.read_bytes(LOCK))["pid"] == os.getpid()
    fs.write_bytes(LOCK, json.dumps({"pid": 1, "host": "elsewhere"}).encode())
    with pytest.raises(StoreLockedError, match="delete the object LOCK"):
        StoreLock(fs, timeout_s=0).acquire()
    assert json.loads(fs.read_bytes(LOCK))["host"] == "elsewhere"


def test_release_leaves_a_lease_taken_over_meanwhile(s3_store):
    _, _, uri = s3_store
    fs = StoreFS(uri)
    lock = StoreLock(fs, timeout_s=0)
    lock.acquire()
    fs.write_bytes(LOCK, json.dumps({"pid": 1, "host": "elsewhere"}).encode())
    lock.release()
    assert fs.exists(LOCK)


def test_an_object_store_without_a_conditional_put_is_refused(tmp_path):
    fs = StoreFS(str(tmp_path))  # standing in for a gs:// or hdfs:// store
    fs.is_local, fs.uri = False, "gs://bucket/store"
    with pytest.raises(StoreError, match="without an exclusive create"):
        StoreLock(fs)
