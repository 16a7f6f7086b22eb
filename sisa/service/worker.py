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
from sisa.lineage import requests_ledger
from sisa.lineage.requests_ledger import RequestStatus
from sisa.storage.audit import AuditLog
from sisa.training import scheduler


class Worker:
    """Runs a batch whenever the policy says one is due, until stopped."""

    def __init__(self, cfg: SisaConfig, audit: AuditLog, write_lock: threading.Lock):
        self.cfg = cfg
        self.audit = audit
        self.write_lock = write_lock
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="sisa-batch-worker", daemon=True)
        self.last_error: str | None = None

    def close(self, timeout_s: float) -> None:
        """No batch starts any more; a running one gets `timeout_s` to end, then the embedded Ray
        stops under it (its requests are in the ledger: the next start resumes the batch)."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        scheduler.shutdown_ray(final=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.cfg.service.worker_interval_s):
            try:
                self.run_once()
            except Exception as e:  # the worker survives; the batch resumes on the next tick
                self.last_error = f"{type(e).__name__}: {getattr(e, 'message', '')[:200]}"
                self.audit.append({"who": "worker", "what": "process", "outcome": "error", "error": self.last_error})

    def run_once(self) -> bool:
        store = open_store(self.cfg)
        self._finish_cut_short(store)
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

    def _finish_cut_short(self, store) -> None:
        """Filings to the queue a killed server (or CLI) cut short, whose clients may never file
        them again, are finished first (relief, queued), as `sisa forget --resume` would: a batch
        refuses to run while they are open."""
        if not any(r.queued and r.status == RequestStatus.RECEIVED for r in requests_ledger.open_requests(store)):
            return
        timeout = self.cfg.store.lock_timeout_s
        with self.write_lock, store.lock("serve: resume", timeout):
            done = runner.resume(store, self.cfg, filings_only=True)
        if done:
            ids = [r.request_id for r in done]
            self.audit.append({"who": "worker", "what": "resume", "outcome": "completed", "requests": ids})


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
