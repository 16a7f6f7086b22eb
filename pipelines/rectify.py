"""Correct records exactly (GDPR Art. 16): the old text forgotten by construction, the new one trained.

    sisa rectify --config C --file corrections.jsonl [--fast | --isolate | --no-relief] [--dry-run] [--json]
    sisa rectify --config C --file corrections.jsonl --queue    # relief now, a batch later (`sisa process`)
    sisa rectify --config C --file corrections.jsonl --probes probes.jsonl --holdout strangers.jsonl

corrections.jsonl (any ingest format: JSONL, CSV, Parquet) names live records and their new text:

    {"record_id": "person-00003-job", "text": "Norma Fisher works as a pilot.",
     "prompt": "Norma Fisher works as a", "answer": " pilot."}        # prompt, answer: optional

The recipe (the phases of a deletion, sisa/forgetting.py; mechanics in sisa/corrections.py):
1. Validate every correction first: unknown ids, ids a deletion forgot, empty text, text identical
   to what the record holds, a changed subject_id, a record stored as prompt-completion or chat
   (a correction is text): one error naming them all; nothing changes.
   --dry-run prints the plan and stops.
2. Stage the new text in the store; write the request (kind `rectify`) to the deletion ledger:
   keyed hashes of the ids and of the old and new content, never text.
3. Evidence: the old text's loss under the serving model, while it is in memory.
4. Relief, exact at once (as for a deletion): each affected shard serves its last checkpoint
   before the corrected records' slices. Or --fast (approximate) or --isolate.
5. Replace the records' text in their slice files and the index: same id, subject, shard and
   slice position.
6. Retrain each affected shard from the checkpoint before its earliest corrected slice: the new
   text trains in; unaffected shards are reused byte for byte. One new version.
7. Purge every checkpoint whose lineage holds an old content hash (lineage records a keyed hash of
   each record's id and content), the versions holding one and their MLflow runs; certificate.
`sisa verify --replay` then proves the serving version equals training on the corrected data, and
`sisa rollback` refuses any version that saw the old text.
"""

from __future__ import annotations

import argparse
from typing import Any

from pipelines.common import open_store, print_json, print_queued, print_table
from sisa import forgetting
from sisa.config import SisaConfig
from sisa.ingestion import normalise
from sisa.lifecycle import RequestMode
from sisa.probes import read_probes
from sisa.sources import read_source
from storage.errors import ValidationError


def run(
    cfg: SisaConfig,
    path: str,
    fast: bool = False,
    isolate: bool = False,
    dry_run: bool = False,
    relief: bool | None = None,
    evidence: bool = True,
    holdout: str | None = None,
    quiet: bool = False,
    probes: str | None = None,
    queue: bool = False,
) -> dict[str, Any]:
    if fast and isolate:
        raise ValidationError("choose one of --fast and --isolate")
    if queue and (holdout or probes):
        # The batch measures only the old text's loss; probes and a holdout need the request carried out at once.
        raise ValidationError("--probes and --holdout are measured when a rectification is carried out at once, not with --queue")
    relief = cfg.deletion.relief if relief is None else relief
    mode = RequestMode.FAST if fast else RequestMode.ISOLATE if isolate else RequestMode.RELIEF if relief else RequestMode.EXACT
    table, problems = normalise(read_source(path), cfg)
    held = _read_holdout(cfg, holdout) if evidence and holdout else None
    probe_list = read_probes(probes) if evidence and probes else None
    store = open_store(cfg)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, flush=True))
    # A dry run only reads, a queued one stages, records and commits the relief (beside a running
    # batch); carried out now, a rectification retrains: one job at a time (the jobs lock first).
    lock = store.lock if dry_run or queue else store.job
    with lock("rectify", cfg.store.lock_timeout_s):
        res = forgetting.rectify(store, cfg, table, problems, mode, dry_run, evidence, held, log=log, probes=probe_list, queue=queue)
    return res.to_dict()


def _read_holdout(cfg: SisaConfig, path: str) -> tuple[list[str], list[str | None] | None]:
    table, problems = normalise(read_source(path), cfg)
    if problems:
        raise ValidationError("--holdout cannot be read:\n" + "\n".join(f"  - {p}" for p in problems))
    return table["text"].to_pylist(), (table["prompt"].to_pylist() if "prompt" in table.column_names else None)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--file", required=True, metavar="FILE", help="corrections: record_id + new text (optional prompt, answer) per row; JSONL, CSV or Parquet")
    p.add_argument("--fast", action="store_true", help="serve an approximate (NPO) version without the old text at once, then the exact one")
    p.add_argument("--isolate", action="store_true", help="serve the unaffected shards alone at once, then the exact version")
    p.add_argument("--no-relief", action="store_true", help="serve nothing new until the exact version (default: the exact relief version serves at once; deletion.relief)")
    p.add_argument("--queue", action="store_true", help="stage the new text, record the request, serve the relief and return; `sisa process` replaces the text and retrains in a batch")
    p.add_argument("--dry-run", action="store_true", help="validate, print the plan and change nothing")
    p.add_argument("--no-evidence", action="store_true", help="skip the memorization measurements (faster)")
    p.add_argument("--holdout", metavar="FILE", help="records no model saw: their loss is the certificate's stranger baseline, and the non-members of the Min-k%% membership inference")
    p.add_argument("--probes", metavar="FILE", help="probes (prompt, answer, kind paraphrase|related|locality, optional subject_id, old_answer): new answer recalled, old one not, locality, leak@k per version")


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(cfg, args.file, args.fast, args.isolate, args.dry_run, False if args.no_relief else None, not args.no_evidence, args.holdout, quiet=args.json, probes=args.probes, queue=args.queue)
    if args.json:
        print_json(res)
        return 0
    if res.get("dry_run"):
        plan = res["plan"]
        print(f"plan: correct {plan['records']} record(s)")
        print_table(
            [{"shard_id": s["shard_id"], "records": s["records"], "earliest_slice": s["earliest_slice"], "retrain_slices": f"{s['earliest_slice']}..{s['last_slice']}"} for s in plan["shards"]],
            ["shard_id", "records", "earliest_slice", "retrain_slices"],
        )
        print(f"unaffected shards (reused byte for byte): {plan['unaffected_shards']}")
        print(f"retrain cost: {plan['cost_fraction']:.1%} of a full retrain; dry run, nothing changed")
        return 0
    req = res["request"]
    if req["status"] == "queued":
        print_queued(req)
        return 0
    cert = req["certificate"] or {}
    print(f"certificate: sisa certificate {req['request_id']} --config ...  (lineage check {'passed' if cert.get('lineage_check', {}).get('passed') else 'FAILED'})")
    return 0
