"""The decoding thread (sisa/serving/batcher.py): concurrent requests from many threads are
decoded together and each gets the text it gets alone, streamed as deltas that add up to it."""

from __future__ import annotations

import threading
import time

import pytest
from sisa.storage.errors import RefusedError

from sisa.config import LoraConfig, ModelConfig
from sisa.model.decoding import DecodeRequest
from sisa.serving.batcher import Batcher, Delta, Done, Error
from sisa.serving.engine import Ensemble, generate_text
from tests.helpers import random_adapters

TINY = ModelConfig(name="tiny", device="cpu")
LORA = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
PROMPTS = ["alice works as", "bob", "carol's phone number is 555", "a much longer prompt about dave and his job as a"]


@pytest.fixture(scope="module")
def ens(tmp_path_factory):
    model, tokenizer = random_adapters(tmp_path_factory.mktemp("adapters"), [f"shard{i}" for i in range(3)])
    return Ensemble(model, tokenizer, {i: f"shard{i}" for i in range(3)}, "posterior", None, 2)


class Collector:
    def __init__(self):
        self.events: list = []
        self.finished = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if not isinstance(event, Delta):
            self.finished.set()

    def text(self, index: int = 0) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta) and e.index == index)

    @property
    def done(self) -> Done:
        assert self.finished.wait(120), "no answer in 120 s"
        (last,) = [e for e in self.events if not isinstance(e, Delta)]
        assert isinstance(last, Done), last
        return last


def request(ens, prompt: str, **kw) -> DecodeRequest:
    return DecodeRequest(ens.tokenizer(prompt)["input_ids"], top_shards=ens.top_shards, **kw)


def test_concurrent_requests_stream_the_texts_each_gets_alone(ens):
    jobs = [(p, n) for n in (4, 9) for p in PROMPTS]
    # Alone first: one thread at a time runs a model (the batcher owns it once started).
    alone = {(p, n): generate_text(ens, p, n) for p, n in jobs}
    batcher = Batcher(ens, max_batch=3)
    try:
        collectors = [Collector() for _ in jobs]
        threads = [
            threading.Thread(target=batcher.submit, args=(request(ens, p, max_new_tokens=n), c))
            for (p, n), c in zip(jobs, collectors, strict=True)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (p, n), c in zip(jobs, collectors, strict=True):
            done = c.done
            assert done.completions[0].text == alone[p, n] == c.text()
            assert done.prompt_tokens == len(ens.tokenizer(p)["input_ids"])
            assert len(done.completions[0].tokens) <= n and done.completions[0].finish in ("stop", "length")
    finally:
        assert batcher.close()


def test_stop_strings_never_reach_the_stream(ens):
    full = generate_text(ens, "bob", 40)
    # The tiny model emits random bytes: stop at an ASCII letter it writes after the start.
    stop = next(ch for ch in full[1:] if ch.isascii() and ch.isalnum())
    batcher = Batcher(ens)
    try:
        c = Collector()
        batcher.submit(request(ens, "bob", max_new_tokens=40, stop=[stop]), c)
        done = c.done
        assert done.completions[0].finish == "stop" and stop not in done.completions[0].text
        assert c.text() == done.completions[0].text and full.startswith(c.text())
        assert len(c.text()) < len(full)
    finally:
        assert batcher.close()


def test_cancel_deadline_and_close_stop_the_work(ens):
    batcher = Batcher(ens)
    long = request(ens, "bob", max_new_tokens=5000, ignore_eos=True)
    c1, c2 = Collector(), Collector()
    ticket = batcher.submit(long, c1)
    batcher.submit(request(ens, "alice works as", max_new_tokens=5000, ignore_eos=True), c2, timeout_s=0.5)
    time.sleep(0.3)
    ticket.cancel()
    assert c1.done.completions[0].finish == "cancelled" and len(c1.done.completions[0].tokens) < 5000
    assert c2.done.completions[0].finish == "cancelled" and len(c2.done.completions[0].tokens) < 5000
    c3 = Collector()
    batcher.submit(request(ens, "bob", max_new_tokens=5000, ignore_eos=True), c3)
    started = time.monotonic()
    assert batcher.close(timeout_s=30)
    assert time.monotonic() - started < 30
    assert c3.finished.wait(1)  # it ended with the thread: cancelled mid-way, or refused before it began
    (last,) = [e for e in c3.events if not isinstance(e, Delta)]
    assert (isinstance(last, Done) and last.completions[0].finish == "cancelled") or (
        isinstance(last, Error) and last.status == 503
    )
    with pytest.raises(RefusedError, match="shutting down"):
        batcher.submit(request(ens, "bob"), Collector())


def test_a_bad_request_is_answered_and_the_others_go_on(ens):
    expected = generate_text(ens, "bob", 4)
    batcher = Batcher(ens)
    try:
        bad, good = Collector(), Collector()
        batcher.submit(DecodeRequest([]), bad)
        batcher.submit(request(ens, "bob", max_new_tokens=4), good)
        assert bad.finished.wait(60)
        (err,) = bad.events
        assert isinstance(err, Error) and err.status == 400 and "no tokens" in err.message
        assert good.done.completions[0].text == expected
    finally:
        assert batcher.close()


def test_a_retired_batcher_finishes_what_it_began(ens):
    """A version that stops serving ends the requests it began (close with cancel=False)."""
    expected = generate_text(ens, "alice works as", 30)
    batcher = Batcher(ens)
    c = Collector()
    ticket = batcher.submit(request(ens, "alice works as", max_new_tokens=30), c)
    for _ in range(600):  # until it has joined the batch
        if ticket.decoding is not None:
            break
        time.sleep(0.05)
    batcher.close(timeout_s=0, cancel=False)
    assert c.done.completions[0].text == expected
    assert batcher.close(timeout_s=30)


def test_a_retired_batcher_decodes_what_was_submitted_before_its_thread_ended(ens):
    """A caller that got the batcher just before its version stopped serving submits after the
    switch (the flood test found it refused as if the server were shutting down): while its
    thread lives the request is decoded; once the thread has ended it is refused at once, never
    left waiting."""
    expected = generate_text(ens, "bob", 4)
    batcher = Batcher(ens)
    c1, c2 = Collector(), Collector()
    first = batcher.submit(request(ens, "alice works as", max_new_tokens=30), c1)
    for _ in range(600):  # until it decodes, so the retired thread stays up
        if first.decoding is not None:
            break
        time.sleep(0.05)
    batcher.close(timeout_s=0, cancel=False)
    batcher.submit(request(ens, "bob", max_new_tokens=4), c2)
    assert c2.done.completions[0].text == expected and c1.done.completions[0].finish != "cancelled"
    batcher.thread.join(30)
    assert not batcher.thread.is_alive() and batcher.ended
    with pytest.raises(RefusedError, match="shutting down"):
        batcher.submit(request(ens, "bob"), Collector())
