"""Correct records exactly (GDPR Art. 16): the old text forgotten by construction, the new one trained.

    sisa rectify --config C --file corrections.jsonl [--fast | --isolate | --no-relief] [--dry-run] [--json]
    sisa rectify --config C --file corrections.jsonl --queue    # relief now, a batch later (`sisa process`)
    sisa rectify --config C --file corrections.jsonl --probes probes.jsonl --holdout strangers.jsonl

corrections.jsonl (JSONL, CSV, Parquet) names live records and their new content, in the format
each record is stored in (one format per file, as for ingest):

    {"record_id": "person-00003-job", "text": "Norma Fisher works as a pilot.",
     "prompt": "Norma Fisher works as a", "answer": " pilot."}        # prompt, answer: optional
    {"record_id": "qa-7", "prompt": "Norma Fisher works as a", "completion": " pilot."}
    {"record_id": "chat-3", "messages": [{"role": "user", "content": "What does Norma Fisher do?"},
                                         {"role": "assistant", "content": "Norma Fisher works as a pilot."}]}

The recipe (the phases of a deletion, sisa/forgetting/runner.py; mechanics in sisa/forgetting/corrections.py):
1. Validate every correction first: unknown ids, ids a deletion forgot, empty text, text identical
   to what the record holds, a changed subject_id, a correction in another format than the
   stored record, a new text the retrain would refuse (longer than `training.max_length` under
   `training.truncation: refuse`): one error naming them all; nothing changes.
   --dry-run prints the plan and stops.
2. Stage the new text in the store; write the request (kind `rectify`) to the deletion ledger:
   keyed hashes of the ids and of the old and new content, never text; and the policy's rule
   (`deletion.policy`). A rule that asks for approvers stops it here (`awaiting_approval`) until
   `sisa approve ID --as NAME` or `sisa reject ID --reason ...` (the staged text is then deleted).
3. Evidence: the old text's loss under the serving model, while it is in memory (queued: measured
   by the batch; --probes and --holdout need the request carried out at once).
4. Relief, exact at once (as for a deletion): each affected shard serves its last checkpoint
   before the corrected records' slices. Or --fast: the edit bridge (approximate, in seconds, already
   answering with the new value): that relief checkpoint (a fresh adapter when slice 0 is hit)
   fine-tuned for `unlearning.edit_steps` steps on the new text alone, never the old one
   (sisa/forgetting/editing.py); the exact version supersedes it and the purge deletes it. Or
   --isolate. With --queue the request stops here, its records marked `rectifying` (no training
   reads them); `sisa process`
   (or `sisa train`, or the service's worker) runs steps 5-7 in a batch with the other queued
   requests, one retrain per shard.
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

from sisa.pipelines import request_options
from sisa.pipelines.common import open_store, print_json
from sisa.storage.errors import ValidationError

from sisa.config import SisaConfig
from sisa.data import normalise, read_source
from sisa.forgetting import RequestOptions, filing, runner


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
    requested_by: str | None = None,
    identity_verification: str | None = None,
) -> dict[str, Any]:
    mode = filing.request_mode(cfg, fast, isolate, relief)
    if queue and (holdout or probes):
        # The batch measures only the old text's loss; probes and a holdout need the request carried out at once.
        raise ValidationError(
            "--probes and --holdout are measured when a rectification is carried out at once, not with --queue"
        )
    table, problems = normalise(read_source(path), cfg)
    held, probe_list = filing.read_evidence_inputs(cfg, evidence, holdout, probes)
    options = RequestOptions(
        mode=mode,
        queue=queue,
        dry_run=dry_run,
        evidence=evidence,
        holdout=held,
        probes=probe_list,
        filer=filing.filer(requested_by, identity_verification),
    )
    store = open_store(cfg)
    # A dry run only reads, a queued one stages, records and commits the relief (beside a running
    # batch); carried out now, a rectification retrains: one job at a time (the jobs lock first).
    lock = store.lock if dry_run or queue else store.job
    with lock("rectify", cfg.store.lock_timeout_s):
        res = runner.rectify(store, cfg, table, problems, options, log=request_options.progress(quiet))
    return res.to_dict()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--file",
        required=True,
        metavar="FILE",
        help="corrections: record_id + the new content in the "
        "record's stored format per row (text, optional "
        "prompt and answer; "
        "prompt + completion; or messages); JSONL, CSV or Parquet",
    )
    request_options.add_request_arguments(
        p,
        fast="serve the edit bridge in seconds: the relief checkpoint (never saw the old text) briefly fine-tuned on "
        "the new text (unlearning.edit_steps, edit_lr), marked approximate; then the exact one supersedes it",
        queue="stage the new text, record the request, serve the relief and return; `sisa process` replaces the text "
        "and retrains in a batch",
        dry_run="validate, print the plan and change nothing",
        probes="probes (prompt, answer, kind paraphrase|related|locality, optional subject_id, old_answer): new answer "
        "recalled, old one not, locality, leak@k per version",
    )


def cli(cfg: SisaConfig, args: argparse.Namespace) -> int:
    res = run(
        cfg,
        args.file,
        fast=args.fast,
        isolate=args.isolate,
        dry_run=args.dry_run,
        relief=False if args.no_relief else None,
        evidence=not args.no_evidence,
        holdout=args.holdout,
        quiet=args.json,
        probes=args.probes,
        queue=args.queue,
        requested_by=args.as_name,
        identity_verification=args.identity_verification,
    )
    if args.json:
        print_json(res)
        return 0
    request_options.print_outcome(res, lambda plan: f"plan: correct {plan['records']} record(s)")
    return 0
