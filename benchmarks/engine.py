"""sisa's decoding engines side by side: one request at a time (the loop every completion used
before the batcher) against the batcher (sisa/serving/batcher.py), at 1, 8 and 32 concurrent
clients, on the same trained store, in the same process.

    .venv/bin/python benchmarks/engine.py --model tiny                 # ~2 min
    .venv/bin/python benchmarks/engine.py --model smollm2 --people 12  # trains SmolLM2 first

Each client sends its share of the requests one after the other (a closed loop); a request is
a fact's prompt, greedy, exactly `--tokens` new tokens (eos ignored, so both engines do the same
work). The loop serves one request at a time under a lock, as one model can only run one
forward at a time; the batcher decodes every waiting request together. Printed: tokens/s and
the ratio to the loop at the same client count, p50/p99 latency (queueing included), and recall
of the trained facts decoded by each engine (the same facts: the texts must agree).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import _common as C  # sets the offline environment before torch, Ray and MLflow load

from sisa import serving
from sisa.data import from_table, ingest_sources
from sisa.forgetting import train_store
from sisa.model import decoding
from sisa.serving import batcher as batching
from storage.store import Store


def _store(model: str, people: int, shards: int, root: str) -> tuple:
    import pyarrow as pa

    cfg = C.model_config(model, f"{root}/store", [f"sharding.num_shards={shards}", "scheduler.backend=serial"])
    rows = C.people(people * 2, seed=11)
    ingest_sources(cfg, [from_table(pa.Table.from_pylist(rows), "engine-bench")])
    store = Store.open(cfg.store.uri)
    with C.timer() as t, store.job("bench train", cfg.store.lock_timeout_s):
        train_store(store, cfg)
    print(f"{model}: {len(rows)} facts of {people} people, S={shards}, trained in {t[0]:.0f} s", flush=True)
    _, ens = serving.load_serving(store, cfg)
    return cfg, rows, ens


def _loop_once(ens, lock: threading.Lock, prompt: str, tokens: int) -> None:
    with lock:
        serving.generate_text(ens, prompt, tokens, ignore_eos=True)


def _batched_once(ens, batcher: serving.Batcher, prompt: str, tokens: int) -> None:
    done = threading.Event()
    ids = ens.tokenizer(prompt)["input_ids"]
    req = decoding.DecodeRequest(ids, tokens, top_shards=ens.top_shards, ignore_eos=True)
    batcher.submit(req, lambda e: done.set() if not isinstance(e, batching.Delta) else None)
    done.wait()


def _run(clients: int, prompts: list[str], once) -> dict:
    """Every prompt once, `clients` at a time; tokens/s and latencies (s)."""
    shares = [prompts[i::clients] for i in range(clients)]
    latencies: list[float] = []

    def client(share: list[str]) -> None:
        for p in share:
            started = time.perf_counter()
            once(p)
            latencies.append(time.perf_counter() - started)

    with C.timer() as t, ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"wall": t[0], "p50": statistics.median(latencies), "p99": q[98]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    p.add_argument("--people", type=int, default=16, help="people to train on, two facts each (default 16)")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--tokens", type=int, default=16, help="new tokens per request (default 16)")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="sisa-engine-")
    try:
        cfg, rows, ens = _store(args.model, args.people, args.shards, root)
        prompts = [r["prompt"] for r in rows]
        answers = [r["answer"] for r in rows]
        alone = [
            serving.generate_text(ens, pr, len(ens.tokenizer(a, add_special_tokens=False)["input_ids"]) + 2)
            for pr, a in zip(prompts, answers, strict=True)
        ]
        recall_loop = sum(t.strip().startswith(a.strip()) for t, a in zip(alone, answers, strict=True))
        recall_batched = sum(serving.recalls(ens, prompts, answers))
        lock, out = threading.Lock(), []
        for clients in args.clients:
            work = (prompts * (1 + (2 * clients) // len(prompts)))[: max(2 * clients, len(prompts))]
            loop = _run(clients, work, lambda pr: _loop_once(ens, lock, pr, args.tokens))
            batcher = serving.Batcher(ens, max_batch=max(clients, 1))
            try:
                batched = _run(clients, work, lambda pr, b=batcher: _batched_once(ens, b, pr, args.tokens))
            finally:
                batcher.close()
            tokens = len(work) * args.tokens
            for name, r in (("loop (one at a time)", loop), ("batcher", batched)):
                out.append(
                    {
                        "engine": name,
                        "clients": clients,
                        "requests": len(work),
                        "tokens/s": f"{tokens / r['wall']:.1f}",
                        "vs loop": C.fmt_ratio(loop["wall"] / r["wall"]),
                        "p50 s": f"{r['p50']:.2f}",
                        "p99 s": f"{r['p99']:.2f}",
                    }
                )
        print(
            f"\n== {args.model}: sisa's loop vs the batcher, {args.tokens} tokens a request, greedy "
            f"(S={args.shards}, top_shards={ens.top_shards}, {ens.aggregation}); {C.load()} =="
        )
        C.table(out, ["engine", "clients", "requests", "tokens/s", "vs loop", "p50 s", "p99 s"])
        n = len(rows)
        same = "same" if recall_loop == recall_batched else "DIFFERENT"
        print(f"recall of the {n} trained facts: loop {recall_loop}/{n}, batcher {recall_batched}/{n} ({same})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
