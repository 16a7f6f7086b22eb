"""Carry out every queued request (deletions and rectifications) in one batch: one retrain per affected shard.

    sisa process --config configs/tiny.yaml          # now
    sisa process --config configs/tiny.yaml --due    # only when the batching policy says so (cron)

1. Every request queued with `sisa forget --queue` or `sisa rectify --queue` (or the service)
   joins the batch (and any batch a crash cut short); their records leave the slice files and the
   index, or have their text replaced with the staged one.
2. Per shard: the earliest slice any of them hit. Each affected shard retrains once from its
   last clean checkpoint; every other shard is reused byte for byte. One version commits.
3. One purge for the whole batch; each request gets its own certificate.

The policy (`deletion.batch_after_h`, `deletion.batch_max`, `deletion.deadline_margin_days`):
a batch is due when the oldest queued request is old enough, when enough wait, or when a
deadline minus the margin has come. `sisa train` runs a batch first, whatever the policy.
"""

from __future__ import annotations

import argparse

from sisa.pipelines.common import open_store, print_json

from sisa.config import SisaConfig
from sisa.forgetting import runner


def run(cfg: SisaConfig, only_due: bool = False, evidence: bool = True, quiet: bool = False) -> dict:
    store = open_store(cfg)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
    with store.job("process", cfg.store.lock_timeout_s) as writer:
        waiting = runner.queued_requests(store)
        reason = runner.due(cfg, waiting)
        if only_due and reason is None:
            return {"ran": False, "queued": len(waiting), "reason": "not due (see deletion.* in the config)"}
        res = runner.process(store, cfg, evidence=evidence, log=log, unlocked=writer.released)
    return {
        "ran": res.batch_id is not None,
        "queued": len(waiting),
        "reason": reason or ("nothing queued" if not waiting else "asked"),
        "batch_id": res.batch_id,
        "model_version": res.model_version,
        "retrained_shards": [r.shard_id for r in res.retrained],
        "requests": [r.request_id for r in res.requests],
        "wall_s": res.wall_s,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--due", action="store_true", help="do nothing unless the batching policy says a batch is due (for cron)"
    )
    p.add_argument("--no-evidence", action="store_true", help="skip the memorization measurements (faster)")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, args.due, not args.no_evidence, quiet=args.json)
    if args.json:
        print_json(res)
    elif not res["ran"]:
        print(f"no batch: {res['queued']} request(s) queued; {res['reason']}")
    else:
        print(
            f"{res['batch_id']}: completed {len(res['requests'])} request(s) ({', '.join(res['requests'])}); "
            f"retrained shard(s) {res['retrained_shards']} once; model version {res['model_version']} serves"
        )
    return 0
