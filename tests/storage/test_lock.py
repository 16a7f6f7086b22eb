"""The store lock: one writer at a time, clear failures, stale locks taken over, released on exit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from sisa.storage.errors import StoreLockedError
from sisa.storage.fs import StoreFS
from sisa.storage.layout import LOCK
from sisa.storage.lock import StoreLock

# A second process that takes the lock, says so, and holds it until its stdin closes or says "go".
HOLDER = """
import sys
from sisa.storage.fs import StoreFS
from sisa.storage.lock import StoreLock
lock = StoreLock(StoreFS(sys.argv[1]), timeout_s=30, purpose="holder")
lock.acquire()
print("held", flush=True)
sys.stdin.readline()
if sys.argv[2] == "release":
    lock.release()
else:
    import os
    os._exit(0)  # die holding the lock: a stale lock
"""


def _holder(store: str, mode: str) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, store, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert p.stdout.readline().strip() == "held"
    return p


def _finish(p: subprocess.Popen) -> None:
    p.stdin.write("go\n")
    p.stdin.close()
    assert p.wait(timeout=30) == 0


@pytest.fixture
def fs(tmp_path) -> StoreFS:
    fs = StoreFS(str(tmp_path / "s"))
    fs.make_dir("")
    return fs


def test_second_writer_fails_naming_the_holder_pid(fs):
    holder = _holder(fs.root, "release")
    try:
        with pytest.raises(StoreLockedError) as err:
            StoreLock(fs, timeout_s=0.3, purpose="ingest").acquire()
        msg = str(err.value)
        assert f"PID {holder.pid}" in msg
        assert "holder" in msg  # what the holder is doing
        assert "store.lock_timeout_s" in msg  # how to fix
        assert err.value.exit_code != 0
    finally:
        _finish(holder)
    assert not fs.exists(LOCK)


def test_second_writer_waits_and_gets_the_lock_when_the_first_releases(fs):
    holder = _holder(fs.root, "release")
    got: list[int] = []

    def wait_for_lock():
        with StoreLock(fs, timeout_s=60, purpose="waiter"):
            got.append(json.loads(fs.read_bytes(LOCK))["pid"])

    waiter = threading.Thread(target=wait_for_lock)
    waiter.start()
    time.sleep(0.5)
    assert got == []  # still waiting while the holder is alive
    _finish(holder)
    waiter.join(timeout=60)
    assert got == [os.getpid()]
    assert not fs.exists(LOCK)


def test_stale_lock_of_a_dead_process_is_taken_over(fs):
    holder = _holder(fs.root, "die")
    _finish(holder)  # exits without releasing
    assert json.loads(fs.read_bytes(LOCK))["pid"] == holder.pid
    with StoreLock(fs, timeout_s=0, purpose="ingest"):
        owner = json.loads(fs.read_bytes(LOCK))
        assert owner["pid"] == os.getpid()
        assert owner["purpose"] == "ingest"
    assert not fs.exists(LOCK)


def test_lock_naming_a_dead_pid_is_stale(fs):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    fs.write_bytes(LOCK, json.dumps({"pid": p.pid, "host": socket.gethostname()}).encode())
    StoreLock(fs, timeout_s=0).acquire()
    assert json.loads(fs.read_bytes(LOCK))["pid"] == os.getpid()


def test_lock_of_a_live_process_on_another_host_is_not_taken(fs):
    fs.write_bytes(LOCK, json.dumps({"pid": 1, "host": "elsewhere"}).encode())
    with pytest.raises(StoreLockedError, match="PID 1 on elsewhere"):
        StoreLock(fs, timeout_s=0).acquire()
    assert json.loads(fs.read_bytes(LOCK))["host"] == "elsewhere"


def test_unreadable_lock_is_stale_only_after_a_grace_period(fs):
    fs.write_bytes(LOCK, b"")
    with pytest.raises(StoreLockedError):
        StoreLock(fs, timeout_s=0).acquire()
    old = time.time() - 60
    os.utime(fs.full(LOCK), (old, old))
    StoreLock(fs, timeout_s=0).acquire()
    assert json.loads(fs.read_bytes(LOCK))["pid"] == os.getpid()


def test_lock_is_released_on_exit_even_after_an_error(fs):
    with StoreLock(fs, purpose="a"):
        assert fs.exists(LOCK)
    assert not fs.exists(LOCK)
    with pytest.raises(RuntimeError), StoreLock(fs, purpose="b"):
        raise RuntimeError("boom")
    assert not fs.exists(LOCK)
    with StoreLock(fs, timeout_s=0):
        pass


def test_release_never_removes_someone_elses_lock(fs):
    lock = StoreLock(fs)
    lock.acquire()
    fs.write_bytes(LOCK, json.dumps({"pid": 1, "host": "elsewhere"}).encode())
    lock.release()
    assert fs.exists(LOCK)


def test_locked_error_survives_pickling(fs):
    import pickle

    fs.write_bytes(LOCK, json.dumps({"pid": 1, "host": "elsewhere"}).encode())
    with pytest.raises(StoreLockedError) as err:
        StoreLock(fs, timeout_s=0).acquire()
    again = pickle.loads(pickle.dumps(err.value))
    assert type(again) is StoreLockedError and again.message == err.value.message
