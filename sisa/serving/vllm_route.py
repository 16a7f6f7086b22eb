"""`serving.engine: vllm`: sisa routes, vLLM decodes.

Each request is routed as sisa's own engine routes it with `top_shards: 1`: the posterior over
the version's shards after the prompt, from the live adapters and the prompt alone
(`decoding.route`, one batched forward for every request waiting), and the shard of highest
posterior decodes it alone. With one shard the mixture is that shard's adapter, so vLLM
decoding the prompt's token ids with that adapter (registered under its checkpoint id:
sisa/serving/vllm_adapters.py) serves the same model, at vLLM's speed: continuous batching,
paged KV cache, multi-LoRA, and a GPU's kernels where there is one.

`VllmRoute` takes requests as `Batcher` does (submit → events: `Delta`, then `Done` or
`Error`), so the completions router does not know which engine serves. A request's deadline
and its cancellation close its stream, which makes vLLM abort it. `close` stops taking
requests; once the ones it began are done, the route lets its adapters go (`on_drained`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sisa.model.decoding import Completion, DecodeRequest, route
from sisa.serving.batcher import Delta, Done, Error, Event, Ticket
from sisa.serving.engine import BASE_SHARD, Ensemble
from sisa.serving.vllm_client import VllmClient, VllmError, VllmUnreachable
from sisa.storage.errors import RefusedError, SisaError

_FINISH = {"stop": "stop", "length": "length"}  # anything else vLLM says (abort) is a cancellation


class VllmRoute:
    """Route every submitted request of one version to its top shard; decode it on vLLM."""

    def __init__(
        self,
        ens: Ensemble,
        client: VllmClient,
        shards: dict[int, str],
        max_batch: int = 32,
        on_drained: Callable[[], None] | None = None,
    ):
        self.ens, self.client, self.max_batch = ens, client, max_batch
        keys = sorted(ens.names)
        # the model name vLLM decodes each shard with: its checkpoint id, or the base alone
        self.models = [client.base_model() if k == BASE_SHARD else shards[k] for k in keys]
        self.on_drained = on_drained
        self.inbox: queue.Queue[Ticket | None] = queue.Queue()
        self.closing = threading.Event()
        self._live: set[int] = set()
        self._tickets: dict[int, Ticket] = {}  # what decodes now, by its _Decode
        self._live_lock = threading.Condition()
        self.pool = ThreadPoolExecutor(max_workers=max(4, 2 * max_batch), thread_name_prefix="sisa-vllm")
        self.thread = threading.Thread(target=self._loop, name="sisa-vllm-router", daemon=True)
        self.thread.start()

    def submit(
        self, request: DecodeRequest, on_event: Callable[[Event], None], timeout_s: float | None = None
    ) -> Ticket:
        """Queue a request; a closed route refuses it (the completions router then takes it to
        the version serving now)."""
        if self.closing.is_set():
            raise RefusedError("the server is shutting down; retry on another instance")
        ticket = Ticket(request, on_event, None if timeout_s is None else time.monotonic() + timeout_s)
        self.inbox.put(ticket)
        return ticket

    def close(self, timeout_s: float = 5.0, cancel: bool = True) -> bool:
        """Take no more requests; cancel what decodes (or, `cancel=False`, let it finish); True
        when everything ended within `timeout_s` (0: do not wait)."""
        self.closing.set()
        self.inbox.put(None)
        if cancel:
            with self._live_lock:
                for t in list(self._tickets.values()):
                    t.cancel()
        if timeout_s:
            self.thread.join(timeout_s)
        return not self.thread.is_alive()

    # -- routing ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                break
            self._route(batch)
        with self._live_lock:  # the requests it began end before its adapters go
            while self._live:
                self._live_lock.wait(0.5)
        self.pool.shutdown(wait=False)
        if self.on_drained is not None:
            # vLLM out of reach: the next version's route (or the purge) unloads them
            with contextlib.suppress(SisaError):
                self.on_drained()

    def _take(self) -> list[Ticket] | None:
        """Requests waiting (at most max_batch, waiting for one); None once closing and empty."""
        out: list[Ticket] = []
        try:
            item = self.inbox.get(block=True)
            while True:
                if item is None:
                    break
                out.append(item)
                if len(out) >= self.max_batch:
                    break
                item = self.inbox.get_nowait()
        except queue.Empty:
            pass
        if not out and self.closing.is_set():
            while True:  # anything that slipped in after close is refused
                try:
                    late = self.inbox.get_nowait()
                except queue.Empty:
                    return None
                if late is not None:
                    late.on_event(Error("the server is shutting down", 503))
        return out

    def _route(self, tickets: list[Ticket]) -> None:
        tickets = [t for t in tickets if not self._refused(t)]
        if not tickets:
            return
        try:
            if len(self.models) == 1:
                chosen = [[0] for _ in tickets]
            else:
                reqs = [DecodeRequest(t.request.ids, top_shards=1) for t in tickets]
                chosen = route(self.ens.model, self.ens.tokenizer, self.ens.adapter_names(), reqs, self.ens.log_prior())
        except SisaError as e:
            for t in tickets:
                t.on_event(Error(e.message, 400))
            return
        except Exception as e:  # noqa: BLE001 - every waiting client must hear of it
            for t in tickets:
                t.on_event(Error(f"routing failed: {type(e).__name__}"))
            return
        for t, shards in zip(tickets, chosen, strict=True):
            _Decode(self, t, self.models[shards[0]]).start()

    def _refused(self, t: Ticket) -> bool:
        if t.cancelled:
            t.on_event(Error("cancelled before it started", 499))
            return True
        if self.closing.is_set():
            t.on_event(Error("the server is shutting down", 503))
            return True
        return False

    def _began(self, key: int, t: Ticket) -> None:
        with self._live_lock:
            self._live.add(key)
            self._tickets[key] = t

    def _ended(self, key: int) -> None:
        with self._live_lock:
            self._live.discard(key)
            self._tickets.pop(key, None)
            self._live_lock.notify_all()


class _Decode:
    """One request on vLLM: a stream per sample (one per seed), its events merged."""

    def __init__(self, route_: VllmRoute, ticket: Ticket, model: str):
        self.route, self.t, self.model = route_, ticket, model
        n = len(ticket.request.seeds)
        self.completions = [Completion() for _ in range(n)]
        self.unsent: list[list[int]] = [[] for _ in range(n)]
        self.pending, self.failed = n, False
        self.lock = threading.Lock()

    def start(self) -> None:
        self.route._began(id(self), self.t)
        for i, seed in enumerate(self.t.request.seeds):
            self.route.pool.submit(self._sample, i, seed)

    def _body(self, seed: int) -> dict[str, Any]:
        r = self.t.request
        return {
            "model": self.model,
            "prompt": r.ids,
            "max_tokens": r.max_new_tokens,
            "temperature": 0.0 if r.greedy else r.temperature,
            "seed": seed,
            "stop": r.stop or None,
            "ignore_eos": r.ignore_eos,
            "logprobs": max(1, r.logprobs),  # the token ids come with them
            "return_tokens_as_token_ids": True,
        }

    def _sample(self, i: int, seed: int) -> None:
        c = self.completions[i]
        try:
            chunks = self.route.client.stream_completion(self._body(seed), self._left())
            try:
                for chunk in chunks:
                    if self.t.cancelled or (self.t.deadline is not None and time.monotonic() > self.t.deadline):
                        c.finish = "cancelled"
                        break
                    self._take_chunk(i, c, chunk["choices"][0])
            finally:
                chunks.close()  # a cancelled request: vLLM sees the connection close and aborts it
            if c.finish is None:
                c.finish = "cancelled"
        except VllmUnreachable as e:
            return self._fail(Error(e.message, 503))
        except VllmError as e:
            gone = e.status == 404
            return self._fail(
                Error("this version's adapter is no longer loaded in vLLM (a purge or a version switch); retry", 503)
                if gone
                else Error(e.message, 502 if e.status >= 500 else 400)
            )
        except Exception as e:  # noqa: BLE001 - the client must hear of it
            return self._fail(Error(f"decoding on vLLM failed: {type(e).__name__}"))
        self._sample_done()

    def _take_chunk(self, i: int, c: Completion, choice: dict[str, Any]) -> None:
        text, lp = choice.get("text") or "", choice.get("logprobs") or {}
        tokens = [int(str(tok).split(":", 1)[1]) for tok in lp.get("tokens") or []]
        logps = [float(x) for x in lp.get("token_logprobs") or []]
        tops = lp.get("top_logprobs") or [{} for _ in tokens]
        # vLLM counts the eos it stopped at as an output token; sisa's engine does not (usage and
        # log-probs are those of the text), so neither does this route.
        eos = None if self.t.request.ignore_eos else self.route.ens.tokenizer.eos_token_id
        k = self.t.request.logprobs
        kept = []
        for tok, logp, top in zip(tokens, logps, tops, strict=False):
            if tok == eos:
                continue
            kept.append(tok)
            c.tokens.append(tok)
            c.token_logprobs.append(logp)
            if k:
                best = sorted(top.items(), key=lambda kv: -kv[1])[:k]
                c.top_logprobs.append([(int(str(name).split(":", 1)[1]), float(v)) for name, v in best])
        c.text += text
        self.unsent[i] += kept
        if text:  # tokens that made no text yet go with the next delta, as sisa's batcher sends them
            self.t.on_event(Delta(i, text, self.unsent[i]))
            self.unsent[i] = []
        reason = choice.get("finish_reason")
        if reason is not None:
            c.finish = _FINISH.get(reason, "cancelled")

    def _left(self) -> float:
        if self.t.deadline is None:
            return 3600.0
        return max(0.1, self.t.deadline - time.monotonic())

    def _fail(self, error: Error) -> None:
        with self.lock:
            first, self.failed = not self.failed, True
            self.pending -= 1
            last = self.pending == 0
        if first:
            self.t.cancel()  # the other samples stop too
            self.t.on_event(error)
        if last:
            self.route._ended(id(self))

    def _sample_done(self) -> None:
        with self.lock:
            self.pending -= 1
            last, failed = self.pending == 0, self.failed
        if last:
            if not failed:
                self.t.on_event(Done(self.completions, len(self.t.request.ids)))
            self.route._ended(id(self))
