"""One decoding thread per loaded version: concurrent requests share every forward.

The HTTP handlers submit requests from many threads or event loops; the batcher's thread owns
the model (peft routes rows to adapters through state on the model's modules, so two threads
must never run forwards on one model at once) and the running `MixtureBatch`
(sisa/model/decoding.py), lets newcomers join at the next step, and reports to each request
through its callback: a `Delta` when a completion's text grows, then a `Done` with the finish
reasons and token counts (or an `Error`). Text is held back while it could
still turn out to be the start of a stop string, so a client never sees what the stop cut.

A request's work stops when its deadline passes or its caller cancels it (a client that went
away): it leaves the batch at the next step. `close` stops taking requests and ends the thread
within a bounded time, cancelling what is still decoding.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sisa.model.decoding import Completion, DecodeRequest, Decoding, MixtureBatch
from sisa.serving.engine import Ensemble
from sisa.storage.errors import RefusedError, SisaError


@dataclass(frozen=True)
class Delta:
    index: int  # which completion (0..n-1)
    text: str  # new text since the last delta of this completion
    tokens: list[int]  # the token ids behind it (for log-probs)


@dataclass(frozen=True)
class Done:
    completions: list[Completion]
    prompt_tokens: int


@dataclass(frozen=True)
class Error:
    message: str
    status: int = 500


Event = Delta | Done | Error


@dataclass
class Ticket:
    """A submitted request: cancel it when its client has gone."""

    request: DecodeRequest
    on_event: Callable[[Event], None]
    deadline: float | None = None  # time.monotonic() after which its work stops
    decoding: Decoding | None = None
    sent_text: list[str] = field(default_factory=list)
    sent_tokens: list[int] = field(default_factory=list)
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.decoding is not None:
            self.decoding.cancel()


class Batcher:
    """Decode every submitted request of one ensemble together, on one thread."""

    def __init__(self, ens: Ensemble, max_batch: int = 32):
        self.ens, self.max_batch = ens, max_batch
        self.inbox: queue.Queue[Ticket | None] = queue.Queue()
        self.closing = threading.Event()
        self.cancel_on_close = True
        # submit() and the thread's end: a request is either taken in or refused, never left behind.
        self._ending = threading.Lock()
        self.ended = False
        self.thread = threading.Thread(target=self._loop, name="sisa-batcher", daemon=True)
        self.thread.start()

    def submit(
        self, request: DecodeRequest, on_event: Callable[[Event], None], timeout_s: float | None = None
    ) -> Ticket:
        """Queue a request. A retired batcher (closed with `cancel=False`: its version stopped
        serving) still takes the requests of callers that got it before, until its thread ends."""
        with self._ending:
            if self.ended or (self.closing.is_set() and self.cancel_on_close):
                raise RefusedError("the server is shutting down; retry on another instance")
            ticket = Ticket(request, on_event, None if timeout_s is None else time.monotonic() + timeout_s)
            self.inbox.put(ticket)
        return ticket

    def close(self, timeout_s: float = 5.0, cancel: bool = True) -> bool:
        """Take no more requests; cancel what decodes (or, with `cancel=False`, let it finish:
        a version that stopped serving ends the requests it began); True when the thread ended
        within `timeout_s` (0: do not wait)."""
        self.cancel_on_close = cancel
        self.closing.set()
        self.inbox.put(None)
        if timeout_s:
            self.thread.join(timeout_s)
        return not self.thread.is_alive()

    # -- the thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        batch = self._new_batch()
        live: list[Ticket] = []
        while True:
            if self.closing.is_set() and not live and self._end():
                return
            newcomers = self._take(block=not live)
            if self.closing.is_set() and self.cancel_on_close:
                for t in live:
                    t.cancel()
            if newcomers:
                live += self._join(batch, newcomers)
            for t in live:
                if t.deadline is not None and time.monotonic() > t.deadline:
                    t.cancel()
            if not batch.active:
                continue
            try:
                ended = batch.step()
            except Exception as e:  # noqa: BLE001 - every waiting client must hear of it
                for t in live:
                    t.on_event(Error(f"decoding failed: {type(e).__name__}"))
                live, batch = [], self._new_batch()
                continue
            for t in live:
                self._report(t)
            done = {id(d) for d in ended}
            for t in [t for t in live if id(t.decoding) in done]:
                t.on_event(Done(t.decoding.completions, len(t.request.ids)))
            live = [t for t in live if id(t.decoding) not in done]

    def _end(self) -> bool:
        """Whether the thread ends now (closing, nothing decoding): on shutdown the requests still
        waiting are refused; a retired batcher ends only once no request waits."""
        with self._ending:
            waiting = []
            while True:
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    waiting.append(item)
            if waiting and not self.cancel_on_close:
                for t in waiting:
                    self.inbox.put(t)
                return False
            self.ended = True
        for t in waiting:
            t.on_event(Error("the server is shutting down", 503))
        return True

    def _new_batch(self) -> MixtureBatch:
        e = self.ens
        return MixtureBatch(e.model, e.tokenizer, e.adapter_names(), e.aggregation, e.log_prior())

    def _take(self, block: bool) -> list[Ticket]:
        """Newcomers waiting in the inbox (waiting for one when nothing decodes)."""
        out: list[Ticket] = []
        try:
            item = self.inbox.get(block=block)
            while True:
                if item is None:  # close() woke the loop
                    return out
                out.append(item)
                if len(out) >= self.max_batch:
                    return out
                item = self.inbox.get_nowait()
        except queue.Empty:
            return out

    def _join(self, batch: MixtureBatch, tickets: list[Ticket]) -> list[Ticket]:
        room = max(0, self.max_batch - len(batch.groups))
        for t in tickets[room:]:
            self.inbox.put(t)  # waits for a place at a later step
        joined = []
        for t in tickets[:room]:
            if self.closing.is_set() and self.cancel_on_close:
                t.on_event(Error("the server is shutting down", 503))
                continue
            if t.cancelled:
                t.on_event(Error("cancelled before it started", 499))
                continue
            try:
                (t.decoding,) = batch.add([t.request])
            except SisaError as e:
                t.on_event(Error(e.message, 400))
                continue
            except Exception as e:  # noqa: BLE001 - the client must hear of it; the batch goes on
                t.on_event(Error(f"decoding failed: {type(e).__name__}"))
                continue
            t.sent_text = [""] * len(t.request.seeds)
            t.sent_tokens = [0] * len(t.request.seeds)
            joined.append(t)
        return joined

    def _report(self, t: Ticket) -> None:
        hold = max((len(s) for s in t.request.stop), default=1) - 1
        for i, c in enumerate(t.decoding.completions):
            text = c.text
            if c.finish is None:
                # Not yet: the tail that could begin a stop string, and a character whose UTF-8
                # bytes have not all been decoded yet (shown as U+FFFD until they have).
                text = text[: len(text) - hold].rstrip("\ufffd")
            if len(text) > len(t.sent_text[i]) and text.startswith(t.sent_text[i]):
                t.on_event(Delta(i, text[len(t.sent_text[i]) :], c.tokens[t.sent_tokens[i] :]))
                t.sent_text[i], t.sent_tokens[i] = text, len(c.tokens)
