"""sisa's decoding engines side by side: one request at a time (the loop every completion used
before the batcher) against the batcher (sisa/serving/batcher.py), at 1, 8 and 32 concurrent
clients, on the same trained store, in the same process.

    .venv/bin/python benchmarks/engine.py --model tiny                 # ~2 min
    .venv/bin/python benchmarks/engine.py --model smollm2 --people 12  # trains SmolLM2 first
    .venv/bin/python benchmarks/engine.py --model smollm2 --people 12 --vllm  # and the vLLM route

With `--vllm` (the environment of `make vllm`): the batcher with top_shards=1, and the vLLM route
(`serving.engine: vllm`: sisa routes each prompt to its top shard, a vLLM server started on
loopback decodes it with that shard's adapter), on the same store; the recall of each, and the
routing's share of a request's latency (the batched posterior forward, timed alone).

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
from sisa.storage.store import Store

from sisa import serving
from sisa.data import from_table, ingest_sources
from sisa.forgetting import train_store
from sisa.model import decoding
from sisa.serving import batcher as batching


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


def _submitted_once(ens, decoder, prompt: str, tokens: int, top_shards: int) -> None:
    done = threading.Event()
    ids = ens.tokenizer(prompt)["input_ids"]
    req = decoding.DecodeRequest(ids, tokens, top_shards=top_shards, ignore_eos=True)
    decoder.submit(req, lambda e: done.set() if not isinstance(e, batching.Delta) else None)
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
    p.add_argument("--vllm", action="store_true", help="also the top-1 batcher and the vLLM route (make vllm)")
    p.add_argument("--vllm-dtype", default="auto", help="service.vllm_dtype of the vLLM server (default auto)")
    args = p.parse_args()
    if args.vllm and args.model == "tiny":
        p.error("--vllm needs --model smollm2: vLLM loads a model folder, and the tiny model is built in memory")
    root = tempfile.mkdtemp(prefix="sisa-engine-")
    try:
        cfg, rows, ens = _store(args.model, args.people, args.shards, root)
        prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
        recall = _recall_loop_and_batched(ens, prompts, answers)
        engines = {"loop (one at a time)": None, "batcher": lambda: serving.Batcher(ens, max_batch=max(args.clients))}
        top1 = vllm = None
        if args.vllm:
            top1, vllm, extra = _vllm_engines(cfg, root, args)
            engines |= extra
            recall |= _recall_top1_and_vllm(top1, vllm, prompts, answers, args)
        out = _measure(args, ens, top1, prompts, engines)
        print(
            f"\n== {args.model}: sisa's engines{' and the vLLM route' if args.vllm else ''}, {args.tokens} tokens a "
            f"request, greedy, ignore_eos (S={args.shards}, batcher top_shards={ens.top_shards}, {ens.aggregation}); "
            f"{C.load()} =="
        )
        C.table(out, ["engine", "clients", "requests", "tokens/s", "vs loop", "p50 s", "p99 s"])
        n = len(rows)
        print("recall of the " + f"{n} trained facts: " + ", ".join(f"{k} {v}/{n}" for k, v in recall.items()))
        if args.vllm:
            _routing_share(top1, prompts, args, out)
    finally:
        if args.vllm and "vllm" in locals() and vllm is not None:
            vllm[0].stop()
        shutil.rmtree(root, ignore_errors=True)


def _recall_loop_and_batched(ens, prompts: list[str], answers: list[str]) -> dict[str, int]:
    alone = [
        serving.generate_text(ens, pr, len(ens.tokenizer(a, add_special_tokens=False)["input_ids"]) + 2)
        for pr, a in zip(prompts, answers, strict=True)
    ]
    return {
        "loop": sum(t.strip().startswith(a.strip()) for t, a in zip(alone, answers, strict=True)),
        "batcher": sum(serving.recalls(ens, prompts, answers)),
    }


def _vllm_engines(cfg, root: str, args) -> tuple:
    """(top-1 ensemble, (server, client, adapters, shards), {engine name: decoder factory})."""
    from sisa.config import build_config

    data = cfg.to_dict()
    data["serving"] |= {"engine": "vllm", "top_shards": 1}
    data["service"] |= {
        "vllm_python": str(C.REPO / ".venv-vllm" / "bin" / "python"),
        "vllm_port": C.free_port(),
        "vllm_dtype": args.vllm_dtype,
    }
    vcfg = build_config(data)
    store = Store.open(vcfg.store.uri)
    v, top1 = serving.load_serving(store, vcfg)
    server = serving.VllmServer(vcfg)
    with C.timer() as t:
        server.start(lambda line: print(line, flush=True))
    client = serving.VllmClient(server.url)
    adapters = serving.VllmAdapters(vcfg, client)
    with C.timer() as t2:
        adapters.hold(store, 0, v.shards)
    print(f"vLLM: started in {t[0]:.0f} s, {len(v.shards)} adapters loaded in {t2[0]:.1f} s", flush=True)
    engines = {
        "batcher, top_shards=1": lambda: serving.Batcher(top1, max_batch=max(args.clients)),
        "vLLM route (top-1)": lambda: serving.VllmRoute(top1, client, v.shards, max_batch=max(args.clients)),
    }
    return top1, (server, client, adapters, v.shards), engines


def _recall_top1_and_vllm(top1, vllm, prompts: list[str], answers: list[str], args) -> dict[str, int]:
    _, client, _, shards = vllm
    needed = [len(top1.tokenizer(a, add_special_tokens=False)["input_ids"]) + 2 for a in answers]
    ours = serving.generate_many(top1, prompts, needed)
    route = serving.VllmRoute(top1, client, shards, max_batch=max(args.clients))
    texts: dict[int, str] = {}
    done = threading.Event()
    for i, (pr, n) in enumerate(zip(prompts, needed, strict=True)):

        def put(e, i=i):
            if isinstance(e, batching.Done | batching.Error):
                texts[i] = e.completions[0].text if isinstance(e, batching.Done) else f"<error {e.message}>"
                if len(texts) == len(prompts):
                    done.set()

        route.submit(decoding.DecodeRequest(top1.tokenizer(pr)["input_ids"], n, top_shards=1), put)
    done.wait(600)
    route.close(timeout_s=30)
    theirs = [texts.get(i, "") for i in range(len(prompts))]
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"greedy texts of the vLLM route equal to sisa's top-1 decode: {same}/{len(prompts)}", flush=True)
    hit = lambda texts_: sum(t.strip().startswith(a.strip()) for t, a in zip(texts_, answers, strict=True))  # noqa: E731
    return {"sisa top-1": hit(ours), "vLLM route": hit(theirs)}


def _measure(args, ens, top1, prompts: list[str], engines: dict) -> list[dict]:
    lock, out = threading.Lock(), []
    for clients in args.clients:
        work = (prompts * (1 + (2 * clients) // len(prompts)))[: max(2 * clients, len(prompts))]
        tokens, walls = len(work) * args.tokens, {}
        for name, make in engines.items():
            if make is None:
                r = _run(clients, work, lambda pr: _loop_once(ens, lock, pr, args.tokens))
            else:
                decoder, e = make(), top1 if "top" in name else ens
                m = 1 if "top" in name else ens.top_shards
                try:
                    r = _run(clients, work, lambda pr, d=decoder, e=e, m=m: _submitted_once(e, d, pr, args.tokens, m))
                finally:
                    decoder.close()
            walls[name] = r["wall"]
            out.append(
                {
                    "engine": name,
                    "clients": clients,
                    "requests": len(work),
                    "tokens/s": f"{tokens / r['wall']:.1f}",
                    "vs loop": C.fmt_ratio(walls["loop (one at a time)"] / r["wall"]),
                    "p50 s": f"{r['p50']:.2f}",
                    "p99 s": f"{r['p99']:.2f}",
                }
            )
            # printed as it goes: a run cut short keeps what it measured
            print("  measured: " + ", ".join(f"{k} {v}" for k, v in out[-1].items()), flush=True)
    return out


def _routing_share(top1, prompts: list[str], args, out: list[dict]) -> None:
    """The routing forward alone, batched as the route batches it, against the route's p50."""
    for clients in args.clients:
        batch = [decoding.DecodeRequest(top1.tokenizer(pr)["input_ids"], top_shards=1) for pr in prompts[:clients]]
        with C.timer() as t:
            decoding.route(top1.model, top1.tokenizer, top1.adapter_names(), batch, top1.log_prior())
        p50 = next(float(r["p50 s"]) for r in out if r["engine"].startswith("vLLM") and r["clients"] == clients)
        print(
            f"routing {len(batch)} prompt(s) in one forward: {t[0]:.3f} s, {100 * t[0] / max(p50, 1e-9):.0f}% of "
            f"the vLLM route's p50 latency at {clients} client(s)"
        )


if __name__ == "__main__":
    main()
