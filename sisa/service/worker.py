"""The service's background worker: a batch of queued requests whenever the policy
(`deletion.*`) says one is due, one at a time under the store lock, while the routes go on
filing (and relieving) requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sisa.config import SisaConfig
from sisa.data.opening import open_store
from sisa.forgetting import runner
from storage.audit import AuditLog


class Worker:
    """Runs a batch whenever the policy says one is due, until stopped."""

    def __init__(self, cfg: SisaConfig, audit: AuditLog, write_lock: threading.Lock):
        self.cfg = cfg
        self.audit = audit
        self.write_lock = write_lock
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sisa-batch-worker", daemon=True)
        self.last_error: str | None = None

    def _loop(self) -> None:
        while not self.stop.wait(self.cfg.service.worker_interval_s):
            try:
                self.run_once()
            except Exception as e:  # the worker survives; the batch resumes on the next tick
                self.last_error = f"{type(e).__name__}: {getattr(e, 'message', '')[:200]}"
                self.audit.append({"who": "worker", "what": "process", "outcome": "error", "error": self.last_error})

    def run_once(self) -> bool:
        store = open_store(self.cfg)
        if runner.due(self.cfg, runner.queued_requests(store)) is None:
            return False
        timeout = self.cfg.store.lock_timeout_s
        with (
            store.jobs_lock("serve: batch", timeout),
            self.write_lock,
            store.lock("serve: batch", timeout) as writer,
        ):
            waiting = runner.queued_requests(store)
            if runner.due(self.cfg, waiting) is None:
                return False
            # While the shard jobs train, requests are filed (and relieved) as at any time.
            res = runner.process(store, self.cfg, unlocked=lambda: _released(self.write_lock, writer))
        self.audit.append(
            {
                "who": "worker",
                "what": "process",
                "outcome": "completed",
                "batch_id": res.batch_id,
                "requests": [r.request_id for r in res.requests],
                "model_version": res.model_version,
            }
        )
        return True


@contextmanager
def _released(thread_lock: threading.Lock, writer) -> Iterator[None]:
    """Both of a batch's write locks let go for the block, taken again after in the order a
    request takes them (this process's lock, then the store's)."""
    with writer.released():
        thread_lock.release()
        try:
            yield
        finally:
            thread_lock.acquire()
