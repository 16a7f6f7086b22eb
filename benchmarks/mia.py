"""Membership inference with a sample that means something: hundreds of forgotten records against
as many never-trained records of the same kind, for every version a deletion creates.

    .venv/bin/python benchmarks/mia.py --model tiny      # a minute; a random model's numbers mean little
    .venv/bin/python benchmarks/mia.py --model smollm2   # ~25 min on 2 shared CPUs

Records: one-sentence facts about fictitious people (sisa/data/synthetic.py, "<name> works as a
<job>.", one record a person, so no two records share a name and the bootstrap's resampling of
records is a resampling of independent units). `--forget` + `--retain` people are trained,
`--strangers` more are made the same way and never trained on. The forgotten ones must be
memorized for the attack to have anything to find: short records (max_length 32), `--epochs`
epochs, every shard one slice (slice_size above any shard's size, `min_steps_per_slice` 0: the
epochs are the training). The demo's shape otherwise: 4 shards, LoRA r=16 on every projection,
the posterior mixture.

On two copies of the trained store every forgotten record is deleted in one request
(`sisa forget --ids ... --holdout strangers.jsonl`): the relief default, then `--fast` (NPO, then
the exact retrain). For each version (before, relief, approximate, exact) the two loss-based
attacks the certificate reports, Min-k% (k = 40%) and the plain loss (the mean token
log-probability), each as a ROC AUC of the forgotten records against the strangers with its seeded
bootstrap 95% interval (1000 stratified resamples, sisa/evidence/statistics.py). Every forgotten
record sits in slice 0 of its shard, so the relief serves the base model alone.

Targets (issue 22, section 3): the exact version's interval contains 0.5 and is at most 0.1
wide; the version before's AUC is far from 0.5 (the attack works).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import _common as C  # sets the offline environment before torch, Ray and MLflow load

from pipelines import forget as forget_pipeline
from pipelines.ingest import run as ingest_run
from pipelines.train import run as train_run
from sisa.data import make_people, write_jsonl
from sisa.training import scheduler

ORDER = ["before", "relief", "approximate", "exact"]


def shape(args: argparse.Namespace) -> list[str]:
    people = args.forget + args.retain
    return [
        f"sharding.num_shards={args.shards}",
        f"sharding.slice_size={people}",  # one slice a shard, whatever the hash gives it
        "training.min_steps_per_slice=0",
        f"training.epochs={args.epochs}",
        "scheduler.backend=ray",
        "scheduler.threads_per_task=1",
    ]


def bench(model: str, args: argparse.Namespace) -> dict:
    rows = make_people(args.forget + args.retain, seed=0, facts_per_person=1)
    strangers = make_people(args.strangers, seed=0, start=len(rows), facts_per_person=1)
    work = tempfile.mkdtemp(prefix=f"sisa-bench-mia-{model}-")
    out: dict = {"model": model, "load": [C.load()], "epochs": args.epochs}
    try:
        cfg = C.model_config(model, f"{work}/store", shape(args))
        ingest_run(cfg, [C.write_people(rows, work)])
        with C.timer() as t:
            train_run(cfg)
        out["train_s"] = t[0]
        holdout = str(write_jsonl(strangers, f"{work}/strangers.jsonl"))
        ids = [r["record_id"] for r in rows[: args.forget]]
        out["sizes"] = {"forgotten": len(ids), "retained": args.retain, "strangers": len(strangers)}
        for label, fast in (("relief", False), ("fast", True)):
            ccfg = C.with_store(cfg, f"{work}/{label}")
            shutil.copytree(cfg.store.uri, ccfg.store.uri)
            t0 = time.perf_counter()
            res = forget_pipeline.run(ccfg, "ids", ids, fast=fast, quiet=True, holdout=holdout)
            out[label] = {"versions": res["request"]["evidence"]["versions"], "wall_s": time.perf_counter() - t0}
            shutil.rmtree(ccfg.store.uri, ignore_errors=True)
        out["load"].append(C.load())
    finally:
        scheduler.shutdown_ray()
        shutil.rmtree(work, ignore_errors=True)
    return out


def _ci(m: dict, key: str) -> str:
    ci = m.get(f"{key}_ci95")
    return "-" if m.get(key) is None else f"{m[key]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _width(m: dict, key: str) -> float | None:
    ci = m.get(f"{key}_ci95")
    return None if not ci else ci[1] - ci[0]


def report(results: list[dict], args: argparse.Namespace) -> None:
    for r in results:
        s = r["sizes"]
        print(
            f"\n=== {r['model']}: {s['forgotten']} forgotten + {s['retained']} retained records trained "
            f"({r['epochs']} epochs) in {r['train_s']:.0f}s, {s['strangers']} strangers; "
            f"{r['load'][0]} → {r['load'][-1]}"
        )
        rows = []
        for request, label in (("relief", "forget (relief)"), ("fast", "forget (--fast)")):
            by = r[request]["versions"]
            for version in sorted(by, key=lambda v: ORDER.index(v) if v in ORDER else len(ORDER)):
                m = by[version].get("membership") or {}
                rows.append(
                    {
                        "request": f"{label}, {r[request]['wall_s']:.0f}s",
                        "version": version,
                        "Min-k% AUC [95% CI]": _ci(m, "auc"),
                        "CI width": C.fmt_s(_width(m, "auc")),
                        "loss AUC [95% CI]": _ci(m, "loss_auc"),
                        "privleak %": C.fmt_s(m.get("privleak_vs_exact")),
                        "n": f"{m.get('members')} vs {m.get('holdout')}",
                    }
                )
        C.table(rows, list(rows[0]))
        for request in ("relief", "fast"):
            exact = r[request]["versions"]["exact"]["membership"]
            for key in ("auc", "loss_auc"):
                lo, hi = exact[f"{key}_ci95"]
                ok = lo <= 0.5 <= hi and hi - lo <= 0.1
                print(
                    f"target ({request}): exact version's {key} interval [{lo:.3f}, {hi:.3f}] contains 0.5 and is "
                    f"<= 0.1 wide: {'met' if ok else 'NOT met'}"
                )
        before = r["relief"]["versions"]["before"]["membership"]
        for key in ("auc", "loss_auc"):
            lo, hi = before[f"{key}_ci95"]
            far = lo > 0.6 or hi < 0.4
            print(
                f"target: the version before's {key} {before[key]:.3f} [{lo:.3f}, {hi:.3f}] far from 0.5 "
                f"(interval outside 0.4-0.6): {'met' if far else 'NOT met'}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["tiny", "smollm2", "both"], default="tiny")
    p.add_argument("--forget", type=int, default=300, help="people forgotten, one record each (default 300)")
    p.add_argument("--retain", type=int, default=60, help="people trained and kept (default 60)")
    p.add_argument("--strangers", type=int, default=300, help="people never trained: the holdout (default 300)")
    p.add_argument("--epochs", type=int, default=8, help="training.epochs (default 8: the records are memorized)")
    p.add_argument("--shards", type=int, default=4, help="sharding.num_shards (default 4, as the demo)")
    args = p.parse_args()
    C.run_models(bench, report, args)


if __name__ == "__main__":
    main()
