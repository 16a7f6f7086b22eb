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
from sisa.pipelines import forget as forget_pipeline
from sisa.pipelines.ingest import run as ingest_run
from sisa.pipelines.train import run as train_run
from sisa.storage.store import Store

from sisa import serving
from sisa.data import make_people
from sisa.evidence import measures
from sisa.lineage import versions
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


def attack(cfg, shards: dict[int, str], members: list[str], holdout: list[str]) -> dict:
    """Both attacks on one version, with the function the certificate's evidence uses."""
    ens = serving.load_ensemble(Store.open(cfg.store.uri), cfg, shards)
    with measures.one_thread():  # as the certificate's evidence measures it (see one_thread)
        return {"membership": measures.membership(ens, members, holdout, cfg.training.max_length)}


def bench(model: str, args: argparse.Namespace) -> dict:
    rows = make_people(args.forget + args.retain, seed=0, facts_per_person=1)
    strangers = make_people(args.strangers, seed=0, start=len(rows), facts_per_person=1)
    members, held = [r["text"] for r in rows[: args.forget]], [r["text"] for r in strangers]
    work = tempfile.mkdtemp(prefix=f"sisa-bench-mia-{model}-")
    out: dict = {"model": model, "load": [C.load()], "epochs": args.epochs, "train_s": None}
    try:
        cfg = C.model_config(model, f"{work}/store", shape(args))
        if args.store:  # a store this script trained before, with the same arguments
            shutil.copytree(args.store, cfg.store.uri)
        else:
            ingest_run(cfg, [C.write_people(rows, work)])
            with C.timer() as t:
                train_run(cfg)
            out["train_s"] = t[0]
        ids = [r["record_id"] for r in rows[: args.forget]]
        out["sizes"] = {"forgotten": len(ids), "retained": args.retain, "strangers": len(strangers)}
        store = Store.open(cfg.store.uri)
        before = attack(cfg, versions.shard_checkpoints(versions.current(store)), members, held)
        requests = [(label, label == "fast") for label in ("fast", "relief") if label in args.requests]
        for i, (label, fast) in enumerate(requests):
            ccfg = C.with_store(cfg, f"{work}/{label}")
            shutil.copytree(cfg.store.uri, ccfg.store.uri)
            by: dict = {"before": before} if i == 0 else {}

            def on_version(kind: str, entry, ccfg=ccfg, by=by, first=i == 0) -> None:
                if first or kind != "exact":  # the exact retrain is deterministic: the same bytes twice
                    by[kind] = attack(ccfg, versions.shard_checkpoints(entry), members, held)

            t0 = time.perf_counter()
            forget_pipeline.run(ccfg, "ids", ids, fast=fast, quiet=True, evidence=False, on_version=on_version)
            out[label] = {"versions": by, "wall_s": time.perf_counter() - t0}
            shutil.rmtree(ccfg.store.uri, ignore_errors=True)
        by_all = {k: v for label, _ in requests for k, v in out[label]["versions"].items()}
        measures.add_privleak(by_all)
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
        trained = "(a store reused)" if r["train_s"] is None else f"{r['train_s']:.0f}s"
        print(
            f"\n=== {r['model']}: {s['forgotten']} forgotten + {s['retained']} retained records trained "
            f"({r['epochs']} epochs) in {trained}, "
            f"{s['strangers']} strangers; "
            f"{r['load'][0]} → {r['load'][-1]}"
        )
        rows = []
        for request, label in [(q, f"forget ({'--fast' if q == 'fast' else q})") for q in ("fast", "relief") if q in r]:
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
        first = next(r[q]["versions"] for q in ("fast", "relief") if q in r and "before" in r[q]["versions"])
        exact = first["exact"]["membership"]
        for key in ("auc", "loss_auc"):
            lo, hi = exact[f"{key}_ci95"]
            ok = lo <= 0.5 <= hi and hi - lo <= 0.1
            print(
                f"target: the exact version's {key} interval [{lo:.3f}, {hi:.3f}] contains 0.5 and is "
                f"<= 0.1 wide: {'met' if ok else 'NOT met'}"
            )
        before = first["before"]["membership"]
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
    p.add_argument("--requests", default="fast,relief", help="which requests to file: fast, relief or both")
    p.add_argument(
        "--store", default=None, help="a store this script trained with the same arguments: copied, not retrained"
    )
    args = p.parse_args()
    args.requests = [q.strip() for q in args.requests.split(",") if q.strip()]
    C.run_models(bench, report, args)


if __name__ == "__main__":
    main()
