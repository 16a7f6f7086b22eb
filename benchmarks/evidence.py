"""Evidence benchmark: the trio, leak@k and Min-k% membership inference for every version of a
deletion (relief, fast, exact) and of a rectification of one fact.

    .venv/bin/python benchmarks/evidence.py --model tiny       # minutes; the numbers of a random model mean nothing
    .venv/bin/python benchmarks/evidence.py --model smollm2    # the demo's shape; long on 2 CPUs

One store with the demo's shape (4 shards, slices of 8, 10 epochs; `--people` people x 2 facts)
is trained once. On copies of it:
  1. `sisa forget --ids` of every record of `--forget` people in one shard (relief, the default),
     with `sisa synth --probes` probes and a holdout of strangers (people no shard saw);
  2. the same with `--fast` (the approximate NPO version, then the exact one);
  3. `sisa rectify` of one person's job (a new job no one has), with the same probes;
  4. the same with `--fast` (the edit bridge: the relief checkpoint taught the new job, then exact),
     with the bridge's and the exact version's latency (`--rectify-only`: runs 3 and 4 alone).
Every version each request created is reported: greedy recall of the forgotten / old answer
(reliability on the records' own prompts, generalization on paraphrases and questions), of the
new answer for the rectification, locality (answer tokens whose greedy prediction is unchanged
from the version before; recall of the other people's facts), leak@10 (completions sampled at
temperature 1 holding the answer), the Min-k% (k = 40%) AUC of the records against the strangers
and MUSE's privacy leak relative to the exact version.
Targets (issue 13, section 4): after the exact deletion the MIA AUC is within 0.05 of 0.5 and
leak@10 is 0; after the rectification the new fact is recalled in >= 90% of its prompts and
paraphrases, the old one in none, and locality >= 0.95.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import _common as C  # sets the offline environment before torch, Ray and MLflow load
from sisa.pipelines import forget as forget_pipeline
from sisa.pipelines import rectify as rectify_pipeline
from sisa.pipelines.ingest import run as ingest_run
from sisa.pipelines.train import run as train_run
from sisa.storage.store import Store

from sisa.data import make_people, make_probes, write_jsonl
from sisa.evidence import read_probes
from sisa.training import scheduler

REQUESTS = ("forget (relief)", "forget (--fast)", "rectify one job", "rectify one job (--fast)")
SHAPE = ["sharding.num_shards=4", "sharding.slice_size=8", "scheduler.backend=ray", "scheduler.threads_per_task=1"]


def copy_store(src: str, dst: str) -> None:
    shutil.copytree(src, dst)


def forget_ids(store: Store, people: int) -> tuple[list[str], list[str]]:
    """Every record of `people` subjects of the largest shard: (record ids, subjects)."""
    idx = store.index.table.to_pylist()
    sizes: dict[int, int] = {}
    for r in idx:
        sizes[r["shard_id"]] = sizes.get(r["shard_id"], 0) + 1
    shard = max(sizes, key=lambda s: (sizes[s], -s))
    subjects = sorted({r["subject_id"] for r in idx if r["shard_id"] == shard})[::2][:people]
    return [r["record_id"] for r in idx if r["subject_id"] in subjects], subjects


def bench(model: str, args: argparse.Namespace) -> dict:
    rows = make_people(args.people, seed=0)
    strangers = make_people(args.strangers, seed=0, start=args.people)
    work = tempfile.mkdtemp(prefix=f"sisa-bench-evidence-{model}-")
    out: dict = {"model": model, "load": [C.load()]}
    try:
        epochs = args.epochs or 10
        cfg = C.model_config(model, f"{work}/store", [*SHAPE, f"training.epochs={epochs}"])
        ingest_run(cfg, [C.write_people(rows, work)])
        t0 = time.perf_counter()
        train_run(cfg)
        out["train_s"] = time.perf_counter() - t0
        probes_path = str(write_jsonl(make_probes(rows), f"{work}/probes.jsonl"))
        holdout_path = str(write_jsonl(strangers, f"{work}/strangers.jsonl"))
        probes = read_probes(probes_path)
        ids, subjects = forget_ids(Store.open(cfg.store.uri), args.forget)
        out["forgotten"] = {
            "records": len(ids),
            "subjects": len(subjects),
            "holdout": len(strangers),
            "probes": len(probes),
        }
        for label, fast in () if args.rectify_only else (("forget (relief)", False), ("forget (--fast)", True)):
            ccfg = C.with_store(cfg, f"{work}/{'fast' if fast else 'relief'}")
            copy_store(cfg.store.uri, ccfg.store.uri)
            t0 = time.perf_counter()
            res = forget_pipeline.run(ccfg, "ids", ids, fast=fast, quiet=True, holdout=holdout_path, probes=probes)
            out[label] = {"evidence": res["request"]["evidence"]["versions"], "wall_s": time.perf_counter() - t0}
            shutil.rmtree(ccfg.store.uri, ignore_errors=True)
        person = next(r for r in rows if r["fact"] == "job" and r["subject_id"] not in subjects)
        fix = [
            {
                "record_id": person["record_id"],
                "text": person["prompt"] + " lighthouse keeper.",
                "answer": " lighthouse keeper.",
            }
        ]
        fix_path = str(write_jsonl(fix, f"{work}/fix.jsonl"))
        for label, fast in (("rectify one job", False), ("rectify one job (--fast)", True)):
            ccfg = C.with_store(cfg, f"{work}/rectify{'-fast' if fast else ''}")
            copy_store(cfg.store.uri, ccfg.store.uri)
            t0 = time.perf_counter()
            res = rectify_pipeline.run(ccfg, fix_path, fast=fast, quiet=True, probes=probes_path)
            out[label] = {
                "evidence": res["request"]["evidence"]["versions"],
                "timings": res["request"]["timings"],
                "wall_s": time.perf_counter() - t0,
            }
            shutil.rmtree(ccfg.store.uri, ignore_errors=True)
        out["load"].append(C.load())
    finally:
        scheduler.shutdown_ray()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _pct(block: dict | None, key: str) -> str:
    if not block or block.get(key) is None:
        return "-"
    return f"{block[key]:.0%}"


def report(results: list[dict], args: argparse.Namespace) -> None:
    for r in results:
        print(
            f"\n=== {r['model']}: trained in {r['train_s']:.0f}s; forgotten {r['forgotten']}; {r['load'][0]} → "
            f"{r['load'][-1]}"
        )
        rows = []
        for request in [k for k in REQUESTS if k in r]:
            order = ["before", "relief", "approximate", "exact"]
            for label, v in sorted(
                r[request]["evidence"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9
            ):
                rel, gen, loc, leak, mia = (
                    v.get(k) or {} for k in ("reliability", "generalization", "locality", "leak_at_k", "membership")
                )
                rows.append(
                    {
                        "request": request,
                        "version": label,
                        "forbidden recall": _pct(rel, "forbidden_recall"),
                        "forbidden loss": C.fmt_s(rel.get("forbidden_answer_loss")),
                        "new recall": _pct(rel, "expected_recall"),
                        "paraphrase forbidden": _pct(gen, "forbidden_recall"),
                        "paraphrase new": _pct(gen, "expected_recall"),
                        "locality unchanged": _pct(loc, "unchanged_tokens"),
                        "locality recall": _pct(loc, "recall"),
                        "leak@k": f"{leak['samples_with_answer']}/{leak['samples']} (k={leak['k']})" if leak else "-",
                        "MIA AUC": C.fmt_s(mia.get("auc")),
                        "privleak %": C.fmt_s(mia.get("privleak_vs_exact")),
                    }
                )
        C.table(rows, list(rows[0]))
        if "forget (relief)" in r:
            _deletion_targets(r)
        _rectify_targets(r["rectify one job"]["evidence"]["exact"], "exact")
        fast = r["rectify one job (--fast)"]
        bridge_s, exact_s = fast["timings"].get("fast_path_s"), fast["timings"].get("retrain_s")
        print(
            f"edit bridge serves after {C.fmt_s(bridge_s)}s (target <= 30 s: "
            f"{'met' if bridge_s is not None and bridge_s <= 30 else 'NOT met'}); its exact retrain took "
            f"{C.fmt_s(exact_s)}s; the whole `rectify --fast` {fast['wall_s']:.0f}s, `rectify` "
            f"{r['rectify one job']['wall_s']:.0f}s"
        )
        _rectify_targets(fast["evidence"].get("approximate", {}), "edit bridge (approximate)")


def _deletion_targets(r: dict) -> None:
    exact = r["forget (relief)"]["evidence"]["exact"]
    auc, leaked = exact.get("membership", {}).get("auc"), exact.get("leak_at_k", {}).get("samples_with_answer")
    k = exact.get("leak_at_k", {}).get("k", "k")  # evidence.leak_k (default 10)
    print(
        f"target: exact deletion MIA AUC within 0.05 of 0.5: {C.fmt_s(auc)} → "
        f"{'met' if auc is not None and abs(auc - 0.5) <= 0.05 else 'NOT met'}"
    )
    print(f"target: exact deletion leak@{k} = 0: {leaked} → {'met' if leaked == 0 else 'NOT met'}")


def _rectify_targets(rx: dict, version: str) -> None:
    new = [rx.get("reliability", {}).get("expected_recall"), rx.get("generalization", {}).get("expected_recall")]
    old = [rx.get("reliability", {}).get("forbidden_recall"), rx.get("generalization", {}).get("forbidden_recall")]
    unchanged = rx.get("locality", {}).get("unchanged_tokens")
    print(
        f"target ({version}): rectified fact recalled >= 90% (prompt, paraphrases+question): {new} → "
        f"{'met' if all(x is not None and x >= 0.9 for x in new) else 'NOT met'}"
    )
    print(f"target ({version}): old fact recalled in none: {old} → {'met' if all(x == 0 for x in old) else 'NOT met'}")
    print(
        f"target ({version}): locality >= 0.95: {C.fmt_s(unchanged)} → "
        f"{'met' if unchanged is not None and unchanged >= 0.95 else 'NOT met'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["tiny", "smollm2", "both"], default="tiny")
    p.add_argument("--people", type=int, default=32, help="people, two facts each (default 32, as the demo)")
    p.add_argument(
        "--strangers", type=int, default=8, help="people no shard sees: the MIA holdout (default 8: 16 records)"
    )
    p.add_argument("--forget", type=int, default=4, help="people forgotten, from one shard (default 4: 8 records)")
    p.add_argument("--epochs", type=int, default=None, help="training.epochs (default 10, as the demo)")
    p.add_argument("--rectify-only", action="store_true", help="only the rectification, plain and --fast")
    args = p.parse_args()
    C.run_models(bench, report, args)


if __name__ == "__main__":
    main()
