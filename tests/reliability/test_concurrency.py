"""Concurrent writers: one holds the store lock, the others wait or fail naming it; nothing is lost.

A real `sisa forget` process takes the store lock and is frozen there with SIGSTOP, so the
window in which it holds the lock is as long as the test needs (no sleeps racing a fast
process). Meanwhile a second `sisa forget` with a short lock timeout fails with "store ... is
locked by PID <the first>" (exit 3) and writes nothing, and a retry of it and an ingest wait for
the lock. After SIGCONT every request is completed or was cleanly refused, the ledger holds
exactly the requests made, and the result is exact. A writer killed while holding the lock
leaves a stale lock that the next writer takes over at once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sisa.pipelines import forget, ingest
from sisa.storage import layout
from sisa.storage.store import Store

from sisa.data.synthetic import write_jsonl
from tests.helpers import cli_args, make_cfg, run_cli
from tests.reliability.helpers import (
    SLICES,
    describe,
    live_ids,
    people,
    requests_of,
    sisa_popen,
    sisa_proc,
    status,
)


def lock_owner(root: Path) -> dict:
    try:
        return json.loads((root / layout.LOCK).read_text())
    except (OSError, ValueError):  # absent, or created and not yet written
        return {}


def wait_for_lock(root: Path, pid: int, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while lock_owner(root).get("pid") != pid:
        assert proc.poll() is None, f"the lock holder exited early: {proc.communicate()}"
        assert time.monotonic() < deadline, "the first writer never took the lock"
        time.sleep(0.01)


def subjects(root: Path, n: int) -> list[tuple[str, set[str]]]:
    """`n` subjects and their record ids."""
    by: dict[str, set[str]] = {}
    for r in Store.open(str(root)).index.table.to_pylist():
        by.setdefault(r["subject_id"], set()).add(r["record_id"])
    return sorted(by.items())[1 : n + 1]


class Background(threading.Thread):
    """Run a pipeline call in a thread; keep its result or exception."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.result = self.error = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args, **self.kwargs)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def test_a_second_forget_fails_or_waits_while_the_first_holds_the_lock(trained_store, tmp_path):
    root = trained_store
    (a, a_ids), (b, b_ids) = subjects(root, 2)
    more = people(4, seed=12, start=900)
    more_path = write_jsonl(more, tmp_path / "more.jsonl")

    first = sisa_popen("forget", "--subject", a, *cli_args(root, *SLICES, "store.lock_timeout_s=120"))
    try:
        wait_for_lock(root, first.pid, first)
        os.kill(first.pid, signal.SIGSTOP)  # frozen while it holds the lock

        # A second `sisa forget` that will not wait: refused, naming the holder, nothing written.
        second = sisa_proc("forget", "--subject", b, *cli_args(root, *SLICES, "store.lock_timeout_s=1"))
        assert second.returncode == 3, describe(second)
        assert f"is locked by PID {first.pid}" in second.stderr and "(forget)" in second.stderr, second.stderr
        hashes_b = set(Store.open(str(root)).hash_ids(sorted(b_ids)))
        assert not any(hashes_b & set(r["id_hashes"]) for r in requests_of(root))

        # Its retry and an ingest both wait for the lock instead.
        retry = Background(forget.run, make_cfg(root, *SLICES, "store.lock_timeout_s=120"), "subject", [b], quiet=True)
        arrivals = Background(ingest.run, make_cfg(root, *SLICES, "store.lock_timeout_s=120"), [str(more_path)])
        retry.start()
        arrivals.start()
        time.sleep(1.5)
        assert retry.is_alive() and arrivals.is_alive(), (retry.error, arrivals.error)
        assert lock_owner(root)["pid"] == first.pid
    finally:
        os.kill(first.pid, signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    retry.join(timeout=300)
    arrivals.join(timeout=300)
    assert retry.error is None and arrivals.error is None, (retry.error, arrivals.error)

    # Every request made is in the ledger exactly once, completed; nothing is open or lost.
    reqs = requests_of(root)
    assert len(reqs) == 2 and all(r["status"] == "completed" for r in reqs)
    store = Store.open(str(root))
    assert sorted(tuple(r["id_hashes"]) for r in reqs) == sorted(
        (tuple(sorted(store.hash_ids(sorted(a_ids)))), tuple(sorted(store.hash_ids(sorted(b_ids)))))
    )
    live = live_ids(root)
    assert not (a_ids | b_ids) & live
    assert {r["record_id"] for r in more} <= live
    st = status(root)
    assert st["open_requests"] == [] and len(st["ingests"]) == 2
    assert not (root / layout.LOCK).exists()
    code, out, err = run_cli("verify", "--replay", *cli_args(root, *SLICES))
    assert code == 0 and "verified" in out, out + err


def test_a_writer_killed_holding_the_lock_leaves_a_stale_lock_the_next_one_takes_over(trained_store, tmp_path):
    root = trained_store
    ((a, a_ids),) = subjects(root, 1)
    more = people(4, seed=13, start=950)
    killed = sisa_proc(
        "ingest",
        str(write_jsonl(more, tmp_path / "more.jsonl")),
        *cli_args(root, *SLICES),
        SISA_FAULT="ingest-after-parts",
    )
    assert killed.returncode == -signal.SIGKILL, describe(killed)
    owner = lock_owner(root)
    assert owner["purpose"] == "ingest"
    with pytest.raises(ProcessLookupError):
        os.kill(owner["pid"], 0)

    # lock_timeout_s=0: the stale lock is recognised and taken over, not waited out.
    started = time.monotonic()
    code, out, err = run_cli("forget", "--subject", a, *cli_args(root, *SLICES, "store.lock_timeout_s=0"))
    assert code == 0, out + err
    assert time.monotonic() - started < 120
    (req,) = requests_of(root)
    assert req["status"] == "completed"
    assert not a_ids & live_ids(root)
    assert not {r["record_id"] for r in more} & live_ids(root), "the killed ingest never committed"
    assert not (root / layout.LOCK).exists()
