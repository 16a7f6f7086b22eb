"""Print the evidence of one deletion request.

    sisa certificate req-20261123-101500-ab12cd --config configs/tiny.yaml [--json]

What it shows: the request's hash and selector kind (never the ids: the ledger keeps keyed
hashes only), counts, affected shards and slices, the checkpoints before and after (ids and
sha256), the lineage check, the purge list, timings, and the memorization evidence measured
while the text was still in memory. What it proves and what it does not is in the README.
"""

from __future__ import annotations

import argparse

from pipelines.common import open_store, print_json
from sisa.config import SisaConfig
from storage import ledgers


def run(cfg: SisaConfig, request_id: str) -> dict:
    store = open_store(cfg)
    req = ledgers.read_request(store.fs, request_id)
    return {k: v for k, v in req.items() if k != "id_hashes"} | {"id_hash_count": len(req["id_hashes"])}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs=1, metavar="REQUEST_ID")


def _f(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    r = run(cfg, args.targets[0])
    if args.json:
        print_json(r)
        return 0
    cert = r.get("certificate") or {}
    plan = r["plan"]
    ev = r.get("evidence", {})
    t = r.get("timings", {})
    print(f"deletion certificate — request {r['request_id']}")
    print(f"  status            {r['status']} (received {r['received_at']}, deadline {r['deadline'][:10]}, completed {r.get('completed_at', '-')})")
    print(f"  request sha256    {cert.get('request_sha256', '-')}")
    print(f"  selector          {r['selector']['kind']} (keyed hash {r['selector']['value_hash'][:16]}...)")
    print(f"  records deleted   {r['records']} (id hashes kept: {r['id_hash_count']}); mode {r['mode']}")
    for s in plan["shards"]:
        print(f"  shard {s['shard_id']:<4}        {s['records']} record(s), slices hit {s['slices_hit']}, retrained from slice {s['earliest_slice']}")
    print(f"  unaffected shards {plan['unaffected_shards']} (reused byte for byte)")
    print(f"  retrain cost      {plan['cost_fraction']:.1%} of a full retrain")
    print(f"  versions          before {r.get('version_before')}, " + ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items()))
    for label, key in (("before", "checkpoints_before"), ("after", "checkpoints_after")):
        for c in cert.get(key, []):
            sha = c.get("adapter_sha256", "")
            print(f"  checkpoint {label:<6} shard {c['shard_id']}: {c['checkpoint_id']}" + (f"  adapter sha256 {sha[:16]}..." if sha else ""))
    lc, pc = cert.get("lineage_check", {}), cert.get("purge_check", {})
    print(f"  lineage check     {'PASSED' if lc.get('passed') else 'FAILED ' + str(lc.get('violations'))}: no serving checkpoint's lineage holds a deleted id hash")
    purge = r.get("purge", {})
    print(f"  purged            {len(purge.get('checkpoints', []))} checkpoint(s), version(s) {purge.get('versions', [])}; purge check {'PASSED' if pc.get('passed') else 'FAILED'}")
    print("  timings           " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    unit = "answer-token" if ev.get("answer_tokens_only") else "per-token"
    print(f"  memorization ({unit} loss of the deleted records, lower = remembered)")
    print(f"    serving model before     {_f(ev.get('loss_before'))}")
    if "loss_fast_path" in ev:
        print(f"    approximate fast path    {_f(ev.get('loss_fast_path'))}")
    print(f"    after exact deletion     {_f(ev.get('loss_after'))}")
    print(f"    shards that never saw them (stranger baseline) {_f(ev.get('loss_unseen_shards'))}")
    if "holdout_before" in ev:
        print(f"  held-out records no model saw ({ev.get('holdout_records')}): before {_f(ev.get('holdout_before'))}"
              + (f", fast path {_f(ev.get('holdout_fast_path'))}" if "holdout_fast_path" in ev else "")
              + f", after {_f(ev.get('holdout_after'))}")
    return 0
