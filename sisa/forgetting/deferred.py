"""Evidence that waits for the core a retrain leaves free.

A request carried out at once measures the version that served before it and its bridge (the
relief or the fast path): greedy recall, leak@k samples, the membership forwards, the callers'
own measures (`on_version`). None of that need hold up what serves, and the shard jobs that
retrain next run in Ray's workers while this process only waits for them: on the demo's 2-core
machine one core idled through the retrain's minute while the evidence queued behind it. So
the phases before the retrain hand such work to `Deferred.later`, and `beside` runs it on a
thread of its own while the shard jobs train (this thread keeps waiting on them, so a Ctrl-C
still cancels them). It is done before anything it reads can go: the purge and the exact
version's evidence call `catch_up` first.

The work mutates the request it measures, which the runner writes to the ledger: `beside`
returns only once the work has stopped, so no ledger write sees it half done.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Work = Callable[[], None]


class Deferred:
    """Work queued for later, done in order, once."""

    def __init__(self) -> None:
        self._queue: list[Work] = []
        self._stop = threading.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def later(self, work: Work) -> None:
        self._queue.append(work)

    def catch_up(self) -> None:
        """Do what is queued, in order (and what that queues meanwhile); stop between two pieces
        once `beside`'s body failed."""
        while self._queue and not self._stop.is_set():
            self._queue.pop(0)()

    @contextmanager
    def beside(self) -> Iterator[None]:
        """Run the queued work on a thread of its own while the body runs; on leaving, wait for it
        and raise what it raised. If the body raises, the work stops after its current piece
        (what is left is dropped: the run failed, the request stays resumable) and the body's
        error goes on. (Where the shard jobs run in this process, the serial backend, the caller
        catches up first instead.)"""
        if not self._queue:
            yield
            return
        errors: list[BaseException] = []

        def work() -> None:
            try:
                self.catch_up()
            except BaseException as e:  # re-raised by this thread below
                errors.append(e)

        thread = threading.Thread(target=work, name="sisa-evidence-beside-retrain", daemon=True)
        self._stop.clear()
        thread.start()
        try:
            yield
        except BaseException:
            self._stop.set()
            thread.join()
            self._queue.clear()
            raise
        thread.join()
        if errors:
            raise errors[0]
